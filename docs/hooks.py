"""MkDocs hooks: the site's home page is the repository's README, its links rewritten from the
repository's root to the docs folder, so the two never drift apart."""

import re
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def on_page_markdown(markdown, page, config, files):
    if page.file.src_uri != "index.md":
        return markdown
    text = README.read_text()
    text = text.replace("](docs/", "](").replace("](ARCHITECTURE.md", "](architecture.md")
    return re.sub(r"\]\(#documentation\)", "](#documentation)", text)
