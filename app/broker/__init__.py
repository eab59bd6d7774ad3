"""What a worker checks and creates on the broker: access, topics and their settings."""
