"""mkdocs hook: publish benchmarks/README.md (outside docs/) as the site's page benchmarks/.

The pages link to it as `../benchmarks/README.md`, the path that works on GitHub; mkdocs resolves
that link against this file's source path, so the link works on the site too.
"""

from mkdocs.structure.files import File, InclusionLevel


def on_files(files, config):
    files.append(
        File(
            "../benchmarks/README.md",
            config["docs_dir"],
            config["site_dir"],
            config["use_directory_urls"],
            dest_uri="benchmarks/index.html",
            inclusion=InclusionLevel.INCLUDED,
        )
    )
    return files
