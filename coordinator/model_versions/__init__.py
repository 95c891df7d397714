"""Model versions and complete prototype sets: immutable, content-addressed blobs."""
