"""viewstream pipeline stage."""
