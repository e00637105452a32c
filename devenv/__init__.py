"""Tools for the demo, the tests and the benchmarks: throwaway PostgreSQL clusters, the Pix-like sample, an LCMS and a
webhook server on loopback, the demo runner. Not shipped to Airflow workers: nothing under plugins/ imports it."""
