"""The demo shopping site (``python -m services.shop`` or ``cnclip-shop``): Taobao-like pages,
QR login, result pictures drawn for the query, and switchable faults for tests."""
