"""Reader tests: trainer-faithful fixtures per format, bad input, store properties."""
