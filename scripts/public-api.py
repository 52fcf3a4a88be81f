#!/usr/bin/env python3
"""The public API of the `flow` crate as a sorted list of items, from rustdoc's `all.html`.

Every item a user can name (re-exports inlined, `#[doc(hidden)]` items left out, which is
where the macros' plumbing lives), one per line as `kind path`, with the public methods and
associated items of each struct, enum and trait from its own page. CI compares the listing
with `public-api.txt`, so the surface changes only on purpose:

    cargo doc --no-deps -p flow && python3 scripts/public-api.py > public-api.txt
"""

import html
import pathlib
import re
import sys

DOC = pathlib.Path(sys.argv[1] if len(sys.argv) > 1 else "target/doc/flow")


def items():
    text = (DOC / "all.html").read_text()
    for _sid, title, body in re.findall(
        r'<h3 id="([a-z-]+)">([^<]+)</h3><ul class="all-items">(.*?)</ul>', text
    ):
        for href, name in re.findall(r'<a href="([^"]+)">([^<]+)</a>', body):
            yield title.rstrip("s").lower().replace("type aliase", "type alias"), name, href


def members(href):
    """The public methods, fields and associated items on an item's own page."""
    page = DOC / href
    if not page.exists():
        return []
    text = page.read_text()
    # Only what the item itself declares: its fields and variants, its inherent impls, and a
    # trait's required and provided items; not the (blanket) trait impls every type gets.
    cut = len(text)
    for marker in ('id="trait-implementations"', 'id="synthetic-implementations"',
                   'id="blanket-implementations"', 'id="implementors"', 'id="foreign-impls"'):
        i = text.find(marker)
        if i != -1:
            cut = min(cut, i)
    text = text[:cut]
    out = set()
    # Inherent and trait-required methods, associated types and constants, fields, variants.
    for kind, name in re.findall(
        r'<section id="(method|tymethod|associatedtype|associatedconstant|structfield|variant)\.([A-Za-z0-9_]+)"',
        text,
    ):
        out.add(f"{kind} {name}")
    return sorted(out)


def main():
    lines = []
    for kind, name, href in items():
        path = "flow::" + html.unescape(name)
        lines.append(f"{kind} {path}")
        if kind in ("struct", "enum", "trait"):
            for m in members(href):
                lines.append(f"    {m}")
    # Group members under their item; items sorted by path.
    blocks, cur = [], None
    for line in lines:
        if line.startswith("    "):
            cur[1].append(line)
        else:
            cur = (line, [])
            blocks.append(cur)
    blocks.sort(key=lambda b: b[0].split(" ", 1)[1])
    for head, body in blocks:
        print(head)
        for b in body:
            print(b)


if __name__ == "__main__":
    main()
