"""The remote copy's folder (checkpoint.remote): its objects and its index, through fsspec.

Under the URL:
    index.json          the remote index: the entries of the local index.json (size, sha256,
                        xxh3, step, ...; a sharded directory's with each of its files) of every
                        checkpoint whose objects are all uploaded. Written last: the commit.
    objects/<sha256>    each checkpoint file (a sharded directory's: each of its files, and its
                        manifest) under its content's sha256. Objects are never replaced, so an
                        alias costs no upload and a reader never meets one half-replaced.
Object stores have no rename and no transaction across objects: the index is the one object
ever replaced, with a conditional write where the store has one (S3: IfNoneMatch="*" for the
first, IfMatch with the ETag of the one read or last written after), so a second writer is
caught instead of silently overwriting it. Readers trust the index, never a listing (listings
are cached and can be stale). Paths are joined as strings: pathlib turns s3://b into s3:/b.
The endpoint and the credentials come from the environment, read by the store's own library
(AWS_ENDPOINT_URL, AWS_ACCESS_KEY_ID, ... for s3fs through botocore); none is in the config.
"""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path
from urllib.parse import urlsplit

from framework.atomic import json_text
from framework.checkpoint.errors import CheckpointError
from framework.checkpoint.index import entry_problem
from framework.runs import layout

URL = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://")
# The extra that installs each protocol's library, for the message when it is missing.
EXTRAS = {"s3": "s3", "s3a": "s3", "gs": "gcs", "gcs": "gcs", "az": "azure", "abfs": "azure", "abfss": "azure"}
OBJECTS = "objects"


class RemoteError(CheckpointError):
    """The remote store failed or refused: one line, naming the URL."""


class InvalidIndex(RemoteError):
    """The remote index is there but is not one (not JSON, no list of files)."""


class IndexConflict(RemoteError):
    """Someone else wrote the remote index since this run read or wrote it."""


def is_url(text: object) -> bool:
    return isinstance(text, str) and URL.match(text) is not None


def url_problem(url: object, key: str = "checkpoint.remote") -> str | None:
    """Why `url` cannot be a remote copy's place, or None: it must be a URL of a protocol
    fsspec knows, whose library is installed, without credentials in it."""
    if not is_url(url):
        return f"{key}={url!r} is not a URL such as s3://bucket/runs/r1 or file:///mnt/share/r1"
    parts = urlsplit(url)
    if parts.username or parts.password:
        return (
            f"{key}: the URL holds credentials; give them through the environment (AWS_ACCESS_KEY_ID, ...), "
            "which the store's library reads: a URL is recorded in the run's files"
        )
    protocol = parts.scheme.lower()
    if not url.startswith(f"{protocol}://"):  # fsspec knows its protocols in lower case only
        return f"{key}={url}: write the protocol in lower case ({protocol}://...)"
    import fsspec  # a dependency of torch's; its protocols' libraries are imported only when used

    try:
        fsspec.get_filesystem_class(protocol)
    except ImportError:
        extra = EXTRAS.get(protocol)
        hint = f"pip install 'framework[{extra}]'" if extra else f"install fsspec's library for {protocol}://"
        return f"{key}={url}: the library for {protocol}:// is not installed ({hint})"
    except ValueError:
        return f"{key}={url}: fsspec knows no protocol {protocol}://"
    # file://mnt/share (two slashes) is the host "mnt": fsspec would write to ./mnt/share.
    if protocol in ("file", "local") and (parts.netloc or not parts.path.startswith("/")):
        return f"{key}={url}: a file:// URL needs an absolute path (file:///mnt/share/r1)"
    return None


def first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0]}" if text else type(e).__name__


class RemoteFolder:
    """One run's remote folder: its index (read, written conditionally) and its objects."""

    def __init__(self, url: str):
        import fsspec

        # Their INFO lines (where the endpoint and the credentials were found) are not the run's news.
        for library in ("botocore", "aiobotocore", "s3fs"):
            logging.getLogger(library).setLevel(logging.WARNING)
        self.url = url.rstrip("/")
        self.protocol = urlsplit(self.url).scheme.lower()
        self.fs, self.root = fsspec.core.url_to_fs(self.url)
        self.tag: str | None = None  # the index's ETag as last read or written (S3)
        self.unanswered: set[bytes] = set()  # index writes since then whose answer was lost: one may have landed
        self.unread = True  # until its index is read: the tag above says nothing yet

    def __str__(self) -> str:
        return self.url

    def path(self, key: str) -> str:
        return f"{self.root.rstrip('/')}/{key}"

    def where(self, key: str) -> str:
        """The URL of `key`, for messages."""
        return f"{self.url}/{key}"

    def failure(self, doing: str, e: BaseException) -> RemoteError:
        return RemoteError(f"{self.url}: cannot {doing}: {first_line(e)}")

    # ---- the index -----------------------------------------------------------------------------
    def read_index(self) -> dict[str, dict]:
        """The remote index's entries by name ({} when there is none yet); an entry that cannot
        be trusted is left out (RemoteError when the store does not answer)."""
        listed = self.read_listed()
        return {} if listed is None else {e["file"]: e for e in listed if remote_entry_problem(e) is None}

    def read_listed(self) -> list | None:
        """The remote index's `files` as written (each entry, those a run would not trust too: the
        verify tool says why); None where there is no index yet. RemoteError when the store does
        not answer, InvalidIndex when what is there is not JSON with a list of `files`."""
        path = self.path(layout.INDEX)
        try:
            self.fs.invalidate_cache(path)
            for _ in range(3):  # the ETag must be that of the bytes read: read between two looks
                before = self.etag(path)
                data = self.fs.cat_file(path)
                if self.etag(path) == before:
                    break
            self.tag, self.unread, self.unanswered = before, False, set()
        except FileNotFoundError as e:
            # s3fs says a missing key by its path (which may hold "bucket"), a missing bucket in words.
            if "bucket does not exist" in str(e).lower():
                raise self.failure("read its index", e) from e
            self.tag, self.unread = None, False
            return None
        except Exception as e:  # each store's library raises its own errors
            raise self.failure("read its index", e) from e
        try:
            listed = json.loads(data)["files"]
            if not isinstance(listed, list):
                raise TypeError
        except (ValueError, KeyError, TypeError) as e:
            raise InvalidIndex(f"{self.where(layout.INDEX)} is not a valid index") from e
        return listed

    def etag(self, path: str) -> str | None:
        if self.protocol not in ("s3", "s3a"):
            return None
        self.fs.invalidate_cache(path)
        return self.fs.info(path).get("ETag")

    def write_index(self, entries: dict[str, dict]) -> None:
        """Replace the remote index: the commit of every checkpoint it names. IndexConflict when
        another writer changed it since this run last read or wrote it (S3)."""
        data = json_text({"files": sorted(entries.values(), key=lambda e: (e["step"], e["file"]))}, indent=2).encode()
        path = self.path(layout.INDEX)
        try:
            if self.protocol in ("s3", "s3a"):
                condition = {"mode": "create"} if self.tag is None else {"IfMatch": self.tag}
                self.unanswered.add(data)
                self.tag = self.fs.pipe_file(path, data, **condition)["ETag"]
                self.unanswered = set()
            elif self.protocol in ("file", "local"):  # a share: written aside, then renamed over
                aside = f"{path}{layout.TEMPORARY_MARK}index"
                self.fs.pipe_file(aside, data)
                self.fs.mv(aside, path)
            else:
                self.fs.pipe_file(path, data)
        except (FileExistsError, OSError) as e:
            if isinstance(e, FileExistsError) or "pre-condition" in str(e) or "Precondition" in str(e):
                if self.own_write_landed(path):
                    return self.write_index(entries)
                raise IndexConflict(
                    f"{self.where(layout.INDEX)} was changed by another writer since this run read it: "
                    "two runs write to one checkpoint.remote (give each run its own URL)"
                ) from e
            raise self.failure("write its index", e) from e
        except Exception as e:
            raise self.failure("write its index", e) from e
        finally:
            self.fs.invalidate_cache(path)

    def own_write_landed(self, path: str) -> bool:
        """Whether the index there is one this run wrote whose answer was lost (the store took it,
        the connection was cut before it said so): no other writer came, and its ETag is now the
        one to match."""
        if not self.unanswered:
            return False
        try:
            tag = self.etag(path)
            if self.fs.cat_file(path) not in self.unanswered or self.etag(path) != tag:
                return False
        except Exception as e:
            raise self.failure("read its index", e) from e
        self.tag, self.unanswered = tag, set()
        return True

    # ---- objects ---------------------------------------------------------------------------------
    def upload(self, local: Path, sha256: str, of: str) -> None:
        """Upload a local file as the object of its sha256 (a file of checkpoint `of`), and check
        its size there."""
        path = self.path(object_key(sha256))
        try:
            self.fs.put_file(str(local), path)
            self.fs.invalidate_cache(path)
            size = self.fs.info(path)["size"]
        except Exception as e:
            raise self.failure(f"upload {of}", e) from e
        if size != local.stat().st_size:
            raise RemoteError(f"{self.where(object_key(sha256))}: uploaded {size} bytes of {local.stat().st_size}")

    def download(self, sha256: str, local: Path) -> None:
        try:
            self.fs.get_file(self.path(object_key(sha256)), str(local))
        except Exception as e:
            raise self.failure(f"download {object_key(sha256)}", e) from e

    def delete(self, sha256: str) -> None:
        try:
            self.fs.rm_file(self.path(object_key(sha256)))
        except FileNotFoundError:
            pass
        except Exception as e:
            raise self.failure(f"delete {object_key(sha256)}", e) from e


def object_key(sha256: str) -> str:
    return f"{OBJECTS}/{sha256}"


def remote_entry_problem(entry: object) -> str | None:
    """Why a remote index entry cannot be trusted: a local one's checks, and every file's sha256
    a hex digest (it names the object)."""
    problem = entry_problem(entry)
    if problem is not None:
        return problem
    described = {**entry.get("files", {}), **({"history": entry["history"]} if "history" in entry else {})}
    for name, digests in described.items():
        if not isinstance(digests, dict) or not re.fullmatch(r"[0-9a-f]{64}", str(digests.get("sha256"))):
            return f"{name!r} is listed without a sha256"
        if not isinstance(digests.get("size"), int):
            return f"{name!r} is listed without a size"
    return None


def objects_of(entry: dict) -> dict[str, int]:
    """The objects a checkpoint is made of, sha256 -> size (None: not listed): its file's, or a
    directory's files' and its manifest's (whose sha256 is the entry's); and its history's."""
    if "files" in entry:
        found = {d["sha256"]: d["size"] for d in entry["files"].values()}
        found.setdefault(entry["sha256"], None)
    else:
        found = {entry["sha256"]: entry["size"]}
    if "history" in entry:
        found.setdefault(entry["history"]["sha256"], entry["history"]["size"])
    return found
