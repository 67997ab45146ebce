"""The report: what the recording says about the new gateway (SQL, verdict, text, HTML)."""
