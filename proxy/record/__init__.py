"""The recording: what is measured of each upstream answer, its rows, and the SQLite writer."""
