"""Using a found subnet: load, evaluate, predict, export."""
