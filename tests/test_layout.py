"""Image paths: the documented layout, parsing back, atomic writes that never go through a link."""

from __future__ import annotations

import errno
import os
import signal
import threading
import time
from datetime import datetime, timedelta
from pathlib import Path

import numpy as np
import pytest

from image_cache.cache.layout import is_temp_name, parse_relative_path, relative_path, relative_paths, write_atomic
from image_cache.cache.root import FileQueue, RootError, Tree

END = 1719532800000  # 2024-06-28T00:00:00Z


def test_path_layout():
    assert relative_path("BTCUSDT", "1h", END, "1280", 150, "", 1) == \
        "BTCUSDT/1h/2024/06/BTCUSDT_1h_2024-06-28T00-00-00_px1280_w150_v1.png"
    assert relative_path("BTCUSD_PERP", "1mo", END + 3723_000, "60x64", 20, "jkx", 3) == \
        "BTCUSD_PERP/1mo/2024/06/BTCUSD_PERP_1mo_2024-06-28T01-02-03_px60x64_w20_jkx_v3.png"


def test_parse_round_trip_and_rejects():
    for args in [("BTCUSDT", "1h", END, "1280", 150, "", 1), ("ETHUSDT", "15m", END, "512", 60, "mpl-yahoo", 2),
                 ("X-1", "1w", END, "60x64", 20, "jkx", 1)]:
        parsed = parse_relative_path(relative_path(*args))
        assert parsed and (parsed.symbol, parsed.interval, parsed.end_open_time_ms, parsed.size_label,
                           parsed.window_len, parsed.file_tag, parsed.version) == args
    good = relative_path("BTCUSDT", "1h", END, "1280", 150, "", 1)
    assert parse_relative_path(good.replace("2024/06", "2024/07")) is None  # wrong folder
    assert parse_relative_path(good.replace(".png", ".jpg")) is None
    assert parse_relative_path("BTCUSDT/1h/2024/06/notes.txt") is None
    # our shape, an impossible date: not ours (it used to raise ValueError, a traceback from verify)
    assert parse_relative_path("BTCUSDT/1h/2024/13/BTCUSDT_1h_2024-13-01T00-00-00_px1280_w150_v1.png") is None


def _write(tree: Tree, rel_path: str, data: bytes) -> None:
    """One file through Tree.write_many, raising what stopped it."""
    _, error = tree.write_many([(rel_path, data)])
    if error is not None:
        raise error


def test_write_atomic_leaves_no_temp(tmp_path: Path):
    rel = relative_path("BTCUSDT", "1h", END, "1280", 150, "", 1)
    open_before = len(os.listdir("/proc/self/fd"))
    with Tree(str(tmp_path)) as tree:
        _write(tree, rel, b"abc")
        _write(tree, rel, b"defg")  # an existing file under the final name is replaced whole
        _write(tree, rel.replace("2024/06", "2024/07").replace("06-28", "07-28"), b"next month")
    assert len(os.listdir("/proc/self/fd")) == open_before  # the folders it kept open are closed
    assert (tmp_path / rel).read_bytes() == b"defg"
    assert os.listdir((tmp_path / rel).parent) == [Path(rel).name]
    assert is_temp_name(f".{Path(rel).name}.123.tmp") and not is_temp_name(Path(rel).name)


def _outside(tmp_path: Path) -> Path:
    (tmp_path / "outside").mkdir()
    precious = tmp_path / "outside" / "precious.txt"
    precious.write_bytes(b"not ours")
    return precious


def test_a_link_at_the_temp_name_is_never_written_through(tmp_path: Path):
    """The old write opened its temp file following links: a link there had its target overwritten."""
    precious = _outside(tmp_path)
    rel = relative_path("BTCUSDT", "1h", END, "1280", 150, "", 1)
    folder = tmp_path / "root" / Path(rel).parent
    folder.mkdir(parents=True)
    (folder / f".{Path(rel).name}.{os.getpid()}.tmp").symlink_to(precious)
    with Tree(str(tmp_path / "root")) as tree, pytest.raises(OSError) as caught:
        _write(tree, rel, b"image")
    assert caught.value.errno == errno.ELOOP
    assert precious.read_bytes() == b"not ours"
    assert not (folder / Path(rel).name).exists()


def test_a_link_at_the_final_name_is_replaced_not_followed(tmp_path: Path):
    precious = _outside(tmp_path)
    rel = relative_path("BTCUSDT", "1h", END, "1280", 150, "", 1)
    final = tmp_path / "root" / rel
    final.parent.mkdir(parents=True)
    final.symlink_to(precious)
    with Tree(str(tmp_path / "root")) as tree:
        _write(tree, rel, b"image")
    assert not final.is_symlink() and final.read_bytes() == b"image"
    assert precious.read_bytes() == b"not ours"
    assert os.listdir(final.parent) == [final.name]


@pytest.mark.parametrize("where", ["BTCUSDT", "BTCUSDT/1h/2024", "BTCUSDT/1h/2024/06"])
@pytest.mark.parametrize("target", ["outside", "inside"])
def test_a_folder_that_is_a_link_is_never_written_through(tmp_path: Path, where: str, target: str):
    """Any link on the way is refused, to a folder outside the root or inside it."""
    precious = _outside(tmp_path)
    root = tmp_path / "root"
    (root / where).parent.mkdir(parents=True, exist_ok=True)
    elsewhere = tmp_path / "outside" if target == "outside" else root / "ETHUSDT"
    elsewhere.mkdir(exist_ok=True)
    (root / where).symlink_to(elsewhere)
    before = sorted(p.name for p in elsewhere.iterdir())
    rel = relative_path("BTCUSDT", "1h", END, "1280", 150, "", 1)
    with Tree(str(root)) as tree, pytest.raises(RootError, match="is a link or not a folder"):
        _write(tree, rel, b"image")
    assert sorted(p.name for p in elsewhere.iterdir()) == before
    assert precious.read_bytes() == b"not ours"


def test_a_file_where_a_folder_belongs_is_refused(tmp_path: Path):
    (tmp_path / "BTCUSDT").write_bytes(b"not a folder")
    with Tree(str(tmp_path)) as tree, pytest.raises(RootError, match="BTCUSDT is a link or not a folder"):
        _write(tree, relative_path("BTCUSDT", "1h", END, "1280", 150, "", 1), b"image")
    assert (tmp_path / "BTCUSDT").read_bytes() == b"not a folder"


@pytest.mark.parametrize("rel", ["/etc/x.png", "BTCUSDT/../x.png", "BTCUSDT//x.png", "./x.png", "BTCUSDT/..",
                                 "BTCUSDT/"])
def test_only_plain_paths_are_written(tmp_path: Path, rel: str):
    (tmp_path / "root").mkdir()
    with Tree(str(tmp_path / "root")) as tree:
        _write(tree, "BTCUSDT/x.png", b"image")  # with BTCUSDT open, the name is checked all the same
        with pytest.raises(RootError, match="not a plain path"):
            _write(tree, rel, b"image")
    assert sorted(p.name for p in (tmp_path / "root").rglob("*")) == ["BTCUSDT", "x.png"]
    assert not (tmp_path / "x.png").exists()


def test_the_path_is_a_function_of_the_index_key_and_back():
    """Schema 4 drops UNIQUE on file_path: the unique key must decide the path, and the path the key."""
    from image_cache import chart
    from image_cache.cache.index import preset_of
    from image_cache.cache.work import image_path
    from image_cache.chart.styles import style_from_tag

    seen = {}
    for style in ("mike", "jkx", "mplfinance:yahoo", "mplfinance:mike"):
        for size, window, version in [(224, 20, 1), (256, 20, 1), (224, 60, 1), (224, 20, 2), (300, 5, 1)]:
            spec = chart.make_spec(style, size, window, version)
            for symbol, interval, end in [("BTCUSDT", "1h", END), ("BTCUSDT", "1h", END + 3_600_000),
                                          ("ETHUSDT", "1h", END), ("BTCUSDT", "4h", END)]:
                key = (symbol, interval, end, *preset_of(spec).values())
                path = image_path(spec, symbol, interval, end)
                assert seen.setdefault(path, key) == key, f"{path}: two keys"
                parsed = parse_relative_path(path)
                height = int(parsed.size_label.split("x")[-1])
                assert (parsed.symbol, parsed.interval, parsed.end_open_time_ms, style_from_tag(parsed.file_tag),
                        height, parsed.window_len, parsed.version) == key
    assert len(set(seen.values())) == len(seen)


def _names(count: int) -> list[str]:
    return [relative_path("BTCUSDT", "1h", END - k * 3_600_000, "1280", 150, "", 1) for k in range(count)]  # one folder


def test_file_queue_writes_in_order_on_its_thread(tmp_path: Path):
    paths = _names(150)  # three batches of 64, the last one partial
    with FileQueue(str(tmp_path)) as files:
        for k, rel in enumerate(paths):
            files.add(rel, f"image {k}".encode(), k)
        assert files.finish() == (list(range(150)), None)
    assert [(tmp_path / rel).read_bytes() for rel in paths] == [f"image {k}".encode() for k in range(150)]
    assert not list(tmp_path.rglob(".*.tmp"))


def test_file_queue_stops_at_the_first_failure(tmp_path: Path):
    """Only the keys of files written come back (their rows get indexed); nothing after the failure is
    written, and the link that failed it is never written through."""
    precious = _outside(tmp_path)
    root = tmp_path / "root"
    paths = _names(150)
    folder = root / Path(paths[0]).parent
    folder.mkdir(parents=True)
    (folder / f".{Path(paths[100]).name}.{os.getpid()}.tmp").symlink_to(precious)
    with FileQueue(str(root)) as files:
        for k, rel in enumerate(paths):
            files.add(rel, b"image", k)
        written, (path, error) = files.finish()
    assert written == list(range(100))
    assert path == paths[100] and error.errno == errno.ELOOP
    assert sorted(p.name for p in folder.glob("*.png")) == sorted(Path(rel).name for rel in paths[:100])
    assert precious.read_bytes() == b"not ours"


def test_file_queue_reports_a_folder_it_cannot_use(tmp_path: Path):
    (tmp_path / "BTCUSDT").write_bytes(b"not a folder")
    with FileQueue(str(tmp_path)) as files:
        files.add(_names(1)[0], b"image", "key")
        written, (path, error) = files.finish()
    assert written == [] and path == _names(1)[0]
    assert isinstance(error, RootError) and "BTCUSDT is a link or not a folder" in str(error)


def test_names_holding_a_nul_byte_are_refused(tmp_path: Path):
    folder = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        with pytest.raises(ValueError, match="NUL"):
            write_atomic(folder, ["x.png\0y"], [b"image"])
    finally:
        os.close(folder)
    assert not list(tmp_path.iterdir())


def test_a_chunks_paths_are_each_windows_path():
    """relative_paths converts a chunk's time stamps at once; each path is relative_path's, with the
    calendar's date (four-digit years, before 1970 too) and parsed back to its end time."""
    ends = np.concatenate([[-30_000_000_000_000, -62_135_596_800_000, -1, -999, -1001, 1, 999, 1_001],
                           np.arange(-400 * 86_400_000, 4_102_444_800_000, 7 * 86_400_000 + 3_723_000)])
    for args in [("BTCUSDT", "1h", "1280", 150, "", 1), ("X-1", "1mo", "60x64", 20, "jkx", 3)]:
        symbol, interval, *rest = args
        paths = relative_paths(symbol, interval, ends, *rest)
        for end, path in zip(ends.tolist(), paths, strict=True):
            day = datetime(1970, 1, 1) + timedelta(seconds=end // 1000)  # the second the window's end is in
            assert path.startswith(f"{symbol}/{interval}/{day.year:04d}/{day.month:02d}/{symbol}_{interval}_"
                                   f"{day.year:04d}-{day:%m-%dT%H-%M-%S}_")
            assert parse_relative_path(path).end_open_time_ms == end // 1000 * 1000
            assert relative_path(symbol, interval, end, *rest) == path


def test_an_interrupt_while_leaving_never_closes_the_folder_under_a_write(tmp_path: Path, monkeypatch):
    """A second Ctrl-C while the queue waits for its thread used to let the caller close the folder the
    thread was writing into: a folder opened next could take its descriptor number and get the files.
    Now the thread finishes its batch into the right folder and closes the folder itself."""
    started, go = threading.Event(), threading.Event()
    real_write_many, calls = Tree.write_many, []

    def write_many(self, files):  # the second batch waits, its folder already open
        calls.append(len(files))
        if len(calls) == 2:
            started.set()
            go.wait(10)
        return real_write_many(self, files)

    monkeypatch.setattr(Tree, "write_many", write_many)
    previous = signal.signal(signal.SIGALRM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt))
    fds_before = len(os.listdir("/proc/self/fd"))
    paths = _names(256)  # four batches: the first written, the second under way, two queued
    try:
        with pytest.raises(KeyboardInterrupt):
            with FileQueue(str(tmp_path)) as files:
                for k, rel in enumerate(paths):
                    files.add(rel, b"image", k)
                assert started.wait(10)
                signal.setitimer(signal.ITIMER_REAL, 0.2)  # the second interrupt, while leaving
                raise KeyboardInterrupt  # the first
        other = tmp_path / "other"
        other.mkdir()
        other_fd = os.open(other, os.O_RDONLY | os.O_DIRECTORY)  # would take a freed descriptor number
        go.set()
        # The thread's end cannot be joined: an interrupted join marks a thread still running as
        # stopped (Python 3.11). It closes the folder after its last write.
        deadline = time.monotonic() + 10
        while len(os.listdir("/proc/self/fd")) > fds_before + 1 and time.monotonic() < deadline:
            time.sleep(0.01)
        written = sorted(p.name for p in tmp_path.rglob("*.png"))
        assert written == sorted(Path(rel).name for rel in paths[:128])  # the queued batches write nothing
        assert not list(other.iterdir())
        os.close(other_fd)
        assert len(os.listdir("/proc/self/fd")) == fds_before
    finally:
        go.set()
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
