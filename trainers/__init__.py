"""viewstream trainers stage."""
