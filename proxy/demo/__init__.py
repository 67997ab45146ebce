"""The demo: the whole product on local fakes, driven by the official SDK."""
