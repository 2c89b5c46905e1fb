"""Generation methods: each turns one prompt row into one preference pair (or a recorded failure)."""
