"""MkDocs hook: the built pages load nothing from the network.

mkdocs-jupyter's notebook template carries a loader that imports mermaid from cdnjs when a page
holds a mermaid diagram. Our notebooks hold none, and the site must work offline (it is built
and opened on machines with no network), so the loader is cut out of every page.
"""

from __future__ import annotations

import re
from typing import Any

MODULE_SCRIPT = re.compile(r'<script type="module">.*?</script>', re.S)


def on_post_page(output: str, page: Any, config: Any) -> str:
    return MODULE_SCRIPT.sub(lambda match: "" if "https://cdnjs." in match.group(0) else match.group(0), output)
