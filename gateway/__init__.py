"""The HTTP gateway of aidetect: web page, prediction API, metrics (ARCHITECTURE.md contract 5)."""
