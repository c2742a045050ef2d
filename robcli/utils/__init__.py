"""Small shared helpers: device resolution, value parsing, seeding, hashing."""
