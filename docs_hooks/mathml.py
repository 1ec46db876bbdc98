"""MkDocs hook: the formulas of the docs (``$...$`` and ``$$...$$``, which pymdownx.arithmatex
marks) become MathML at build time (latex2mathml), which browsers render natively: the site
shows its formulas offline, with no script loaded from the network."""
from __future__ import annotations

import html
import re

from latex2mathml.converter import convert

_BLOCK = re.compile(r'<div class="arithmatex">\\\[(.*?)\\\]</div>', re.S)
_INLINE = re.compile(r'<span class="arithmatex">\\\((.*?)\\\)</span>', re.S)


def to_mathml(page_html: str) -> str:
    """Every arithmatex block and inline formula of ``page_html`` as MathML."""
    page_html = _BLOCK.sub(lambda m: convert(html.unescape(m.group(1)).strip(), display="block"), page_html)
    return _INLINE.sub(lambda m: convert(html.unescape(m.group(1)).strip()), page_html)


def on_page_content(page_html: str, **kwargs) -> str:
    return to_mathml(page_html)
