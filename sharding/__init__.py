"""viewstream sharding stage."""
