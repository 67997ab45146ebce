"""`python -m proxy collect`: every pod's recording, fetched as a consistent snapshot."""
