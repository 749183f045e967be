"""Image paths: the documented layout, parsing back, atomic writes."""

from __future__ import annotations

import os
from pathlib import Path

from cache.layout import is_temp_name, parse_relative_path, relative_path, write_atomic

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


def test_write_atomic_leaves_no_temp(tmp_path: Path):
    rel = relative_path("BTCUSDT", "1h", END, "1280", 150, "", 1)
    write_atomic(str(tmp_path), rel, b"abc")
    write_atomic(str(tmp_path), rel, b"defg")
    assert (tmp_path / rel).read_bytes() == b"defg"
    assert os.listdir((tmp_path / rel).parent) == [Path(rel).name]
    assert is_temp_name(f".{Path(rel).name}.123.tmp") and not is_temp_name(Path(rel).name)


def test_the_path_is_a_function_of_the_index_key_and_back():
    """Schema 4 drops UNIQUE on file_path: the unique key must decide the path, and the path the key."""
    import chart
    from cache.runner import preset_of
    from cache.work import image_path
    from chart.styles import style_from_tag

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
