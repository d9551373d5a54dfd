"""Reading the shop's pages in tests: CSS selectors through BeautifulSoup (soupsieve), the
same selectors a site profile uses."""
from __future__ import annotations

import io

import httpx
import zxingcpp
from bs4 import BeautifulSoup
from PIL import Image


def soup(response: httpx.Response) -> BeautifulSoup:
    return BeautifulSoup(response.text, "html.parser")


def decode_qr(png: bytes) -> str:
    """The text of the one QR code in the picture."""
    found = zxingcpp.read_barcodes(Image.open(io.BytesIO(png)).convert("RGB"))
    assert len(found) == 1, f"expected one QR code, found {len(found)}"
    return found[0].text
