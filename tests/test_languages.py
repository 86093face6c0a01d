"""`engine.languages`: code normalisation and names, table-driven."""

from __future__ import annotations

import pytest

from engine.languages import (
    _TABLE,
    english_name,
    is_known_language,
    iso639_2,
    native_name,
    normalize_language,
)


@pytest.mark.parametrize(
    ("code", "expected"),
    [
        # ISO 639-1
        ("en", "en"),
        ("DE", "de"),
        (" fr ", "fr"),
        # ISO 639-2/T and /B
        ("eng", "en"),
        ("deu", "de"),
        ("ger", "de"),
        ("fra", "fr"),
        ("fre", "fr"),
        ("zho", "zh"),
        ("chi", "zh"),
        ("ces", "cs"),
        ("cze", "cs"),
        ("nld", "nl"),
        ("dut", "nl"),
        ("slk", "sk"),
        ("slo", "sk"),
        ("FIN", "fi"),
        # BCP 47 and locale names: region and script dropped
        ("en-US", "en"),
        ("pt-BR", "pt"),
        ("pt_BR", "pt"),
        ("zh-Hans-CN", "zh"),
        ("es-419", "es"),
        ("eng-GB", "en"),
        # withdrawn codes and ISO 639-3 individual languages
        ("iw", "he"),
        ("in", "id"),
        ("cmn", "zh"),
        ("nob", "nb"),
        # 3-letter codes without a 2-letter form stay 3 letters
        ("fil", "fil"),
        ("yue", "yue"),
        ("mul", "mul"),
        ("xyz", "xyz"),  # well-formed but unknown: kept
        # language names
        ("English", "en"),
        ("german", "de"),
        ("Deutsch", "de"),
        ("Français", "fr"),
        # nothing
        ("und", None),
        ("UND", None),
        ("", None),
        ("   ", None),
        (None, None),
        ("und-US", None),
        ("not a language", None),
        ("e", None),
        ("english!", None),
    ],
)
def test_normalize_language(code, expected):
    assert normalize_language(code) == expected


@pytest.mark.parametrize(
    ("code", "english", "native"),
    [
        ("de", "German", "Deutsch"),
        ("ger", "German", "Deutsch"),
        ("en-US", "English", "English"),
        ("fr", "French", "Français"),
        ("es", "Spanish", "Español"),
        ("ja", "Japanese", "日本語"),
        ("zh", "Chinese", "中文"),
        ("ru", "Russian", "Русский"),
        ("ar", "Arabic", "العربية"),
        ("pt", "Portuguese", "Português"),
        ("nb", "Norwegian Bokmål", "Norsk bokmål"),
        ("fil", "Filipino", "Filipino"),
        ("ae", "Avestan", "Avestan"),  # no native name in the table: the English one
        ("xyz", "xyz", "xyz"),  # unknown: the code
        ("und", "und", "und"),
    ],
)
def test_names(code, english, native):
    assert english_name(code) == english
    assert native_name(code) == native


@pytest.mark.parametrize(
    ("code", "expected"),
    [("de", "deu"), ("ger", "deu"), ("en-GB", "eng"), ("fil", "fil"), ("und", None)],
)
def test_iso639_2(code, expected):
    assert iso639_2(code) == expected


@pytest.mark.parametrize(
    ("code", "known"),
    [("en", True), ("eng", True), ("pt-BR", True), ("yue", True), ("hd", False), ("xyz", False)],
)
def test_is_known_language(code, known):
    assert is_known_language(code) is known


def test_table_is_consistent():
    assert len(_TABLE) >= 180  # every ISO 639-1 language
    native = [code for code, row in _TABLE.items() if row[3]]
    assert len(native) >= 60
    for code, (terminology, bibliographic, english, _) in _TABLE.items():
        assert len(code) == 2 and len(terminology) == 3 and english
        assert normalize_language(terminology) == code
        if bibliographic:
            assert normalize_language(bibliographic) == code
        assert normalize_language(english) == code
