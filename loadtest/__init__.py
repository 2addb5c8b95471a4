"""Load tests (Locust) and benchmarks of the aidetect stack; see loadtest/README.md."""
