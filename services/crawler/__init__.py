"""The crawler service: Celery workers that each own one browser session (rank), log in by
QR code, search a shopping site described by a site profile and push the images to Redis."""
