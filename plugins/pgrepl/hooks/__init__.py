"""One hook per system: the source and the warehouse (postgres), the learning-content API (lcms), the webhooks
(webhook), the S3 bucket of dump_to_s3 (s3)."""
