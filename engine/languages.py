"""Language codes without a network: ISO 639-1, ISO 639-2 (B and T), simple BCP 47 tags.

vipe writes languages as the 2-letter ISO 639-1 code where one exists (`audio-en`, `lang="de"`
in manifests), else as the lower-case 3-letter ISO 639-2/3 code. `normalize_language` turns what
jobs, file names and track metadata hold into that form; `english_name` and `native_name` give
the labels for manifests (`UseNativeLanguageNames`).

The table holds every ISO 639-1 language (so that a 3-letter code always finds its 2-letter
form) with its English name, and the native name of the most common ones.
"""

from __future__ import annotations

import re

# 639-1 code -> (639-2/T code, 639-2/B code or "" when the same, English name, native name or "")
_TABLE: dict[str, tuple[str, str, str, str]] = {
    "aa": ("aar", "", "Afar", "Afaraf"),
    "ab": ("abk", "", "Abkhazian", "Аҧсшәа"),
    "ae": ("ave", "", "Avestan", ""),
    "af": ("afr", "", "Afrikaans", "Afrikaans"),
    "ak": ("aka", "", "Akan", "Akan"),
    "am": ("amh", "", "Amharic", "አማርኛ"),
    "an": ("arg", "", "Aragonese", "Aragonés"),
    "ar": ("ara", "", "Arabic", "العربية"),
    "as": ("asm", "", "Assamese", "অসমীয়া"),
    "av": ("ava", "", "Avaric", ""),
    "ay": ("aym", "", "Aymara", "Aymar aru"),
    "az": ("aze", "", "Azerbaijani", "Azərbaycan dili"),
    "ba": ("bak", "", "Bashkir", "Башҡорт теле"),
    "be": ("bel", "", "Belarusian", "Беларуская"),
    "bg": ("bul", "", "Bulgarian", "Български"),
    "bh": ("bih", "", "Bihari", ""),
    "bi": ("bis", "", "Bislama", "Bislama"),
    "bm": ("bam", "", "Bambara", "Bamanankan"),
    "bn": ("ben", "", "Bengali", "বাংলা"),
    "bo": ("bod", "tib", "Tibetan", "བོད་ཡིག"),
    "br": ("bre", "", "Breton", "Brezhoneg"),
    "bs": ("bos", "", "Bosnian", "Bosanski"),
    "ca": ("cat", "", "Catalan", "Català"),
    "ce": ("che", "", "Chechen", "Нохчийн"),
    "ch": ("cha", "", "Chamorro", "Chamoru"),
    "co": ("cos", "", "Corsican", "Corsu"),
    "cr": ("cre", "", "Cree", ""),
    "cs": ("ces", "cze", "Czech", "Čeština"),
    "cu": ("chu", "", "Church Slavic", ""),
    "cv": ("chv", "", "Chuvash", "Чӑвашла"),
    "cy": ("cym", "wel", "Welsh", "Cymraeg"),
    "da": ("dan", "", "Danish", "Dansk"),
    "de": ("deu", "ger", "German", "Deutsch"),
    "dv": ("div", "", "Divehi", "ދިވެހި"),
    "dz": ("dzo", "", "Dzongkha", "རྫོང་ཁ"),
    "ee": ("ewe", "", "Ewe", "Eʋegbe"),
    "el": ("ell", "gre", "Greek", "Ελληνικά"),
    "en": ("eng", "", "English", "English"),
    "eo": ("epo", "", "Esperanto", "Esperanto"),
    "es": ("spa", "", "Spanish", "Español"),
    "et": ("est", "", "Estonian", "Eesti"),
    "eu": ("eus", "baq", "Basque", "Euskara"),
    "fa": ("fas", "per", "Persian", "فارسی"),
    "ff": ("ful", "", "Fulah", "Fulfulde"),
    "fi": ("fin", "", "Finnish", "Suomi"),
    "fj": ("fij", "", "Fijian", "Vosa Vakaviti"),
    "fo": ("fao", "", "Faroese", "Føroyskt"),
    "fr": ("fra", "fre", "French", "Français"),
    "fy": ("fry", "", "Western Frisian", "Frysk"),
    "ga": ("gle", "", "Irish", "Gaeilge"),
    "gd": ("gla", "", "Scottish Gaelic", "Gàidhlig"),
    "gl": ("glg", "", "Galician", "Galego"),
    "gn": ("grn", "", "Guarani", "Avañe'ẽ"),
    "gu": ("guj", "", "Gujarati", "ગુજરાતી"),
    "gv": ("glv", "", "Manx", "Gaelg"),
    "ha": ("hau", "", "Hausa", "Hausa"),
    "he": ("heb", "", "Hebrew", "עברית"),
    "hi": ("hin", "", "Hindi", "हिन्दी"),
    "ho": ("hmo", "", "Hiri Motu", ""),
    "hr": ("hrv", "", "Croatian", "Hrvatski"),
    "ht": ("hat", "", "Haitian Creole", "Kreyòl ayisyen"),
    "hu": ("hun", "", "Hungarian", "Magyar"),
    "hy": ("hye", "arm", "Armenian", "Հայերեն"),
    "hz": ("her", "", "Herero", ""),
    "ia": ("ina", "", "Interlingua", "Interlingua"),
    "id": ("ind", "", "Indonesian", "Bahasa Indonesia"),
    "ie": ("ile", "", "Interlingue", "Interlingue"),
    "ig": ("ibo", "", "Igbo", "Asụsụ Igbo"),
    "ii": ("iii", "", "Sichuan Yi", "ꆈꌠꉙ"),
    "ik": ("ipk", "", "Inupiaq", "Iñupiaq"),
    "io": ("ido", "", "Ido", "Ido"),
    "is": ("isl", "ice", "Icelandic", "Íslenska"),
    "it": ("ita", "", "Italian", "Italiano"),
    "iu": ("iku", "", "Inuktitut", "ᐃᓄᒃᑎᑐᑦ"),
    "ja": ("jpn", "", "Japanese", "日本語"),
    "jv": ("jav", "", "Javanese", "Basa Jawa"),
    "ka": ("kat", "geo", "Georgian", "ქართული"),
    "kg": ("kon", "", "Kongo", "Kikongo"),
    "ki": ("kik", "", "Kikuyu", "Gĩkũyũ"),
    "kj": ("kua", "", "Kuanyama", ""),
    "kk": ("kaz", "", "Kazakh", "Қазақ тілі"),
    "kl": ("kal", "", "Kalaallisut", "Kalaallisut"),
    "km": ("khm", "", "Khmer", "ភាសាខ្មែរ"),
    "kn": ("kan", "", "Kannada", "ಕನ್ನಡ"),
    "ko": ("kor", "", "Korean", "한국어"),
    "kr": ("kau", "", "Kanuri", ""),
    "ks": ("kas", "", "Kashmiri", "कॉशुर"),
    "ku": ("kur", "", "Kurdish", "Kurdî"),
    "kv": ("kom", "", "Komi", "Коми кыв"),
    "kw": ("cor", "", "Cornish", "Kernewek"),
    "ky": ("kir", "", "Kyrgyz", "Кыргызча"),
    "la": ("lat", "", "Latin", "Latina"),
    "lb": ("ltz", "", "Luxembourgish", "Lëtzebuergesch"),
    "lg": ("lug", "", "Ganda", "Luganda"),
    "li": ("lim", "", "Limburgish", "Limburgs"),
    "ln": ("lin", "", "Lingala", "Lingála"),
    "lo": ("lao", "", "Lao", "ພາສາລາວ"),
    "lt": ("lit", "", "Lithuanian", "Lietuvių"),
    "lu": ("lub", "", "Luba-Katanga", "Kiluba"),
    "lv": ("lav", "", "Latvian", "Latviešu"),
    "mg": ("mlg", "", "Malagasy", "Malagasy"),
    "mh": ("mah", "", "Marshallese", "Kajin M̧ajeļ"),
    "mi": ("mri", "mao", "Maori", "Māori"),
    "mk": ("mkd", "mac", "Macedonian", "Македонски"),
    "ml": ("mal", "", "Malayalam", "മലയാളം"),
    "mn": ("mon", "", "Mongolian", "Монгол"),
    "mr": ("mar", "", "Marathi", "मराठी"),
    "ms": ("msa", "may", "Malay", "Bahasa Melayu"),
    "mt": ("mlt", "", "Maltese", "Malti"),
    "my": ("mya", "bur", "Burmese", "မြန်မာ"),
    "na": ("nau", "", "Nauru", "Dorerin Naoero"),
    "nb": ("nob", "", "Norwegian Bokmål", "Norsk bokmål"),
    "nd": ("nde", "", "North Ndebele", "isiNdebele"),
    "ne": ("nep", "", "Nepali", "नेपाली"),
    "ng": ("ndo", "", "Ndonga", "Owambo"),
    "nl": ("nld", "dut", "Dutch", "Nederlands"),
    "nn": ("nno", "", "Norwegian Nynorsk", "Norsk nynorsk"),
    "no": ("nor", "", "Norwegian", "Norsk"),
    "nr": ("nbl", "", "South Ndebele", "isiNdebele"),
    "nv": ("nav", "", "Navajo", "Diné bizaad"),
    "ny": ("nya", "", "Chichewa", "Chichewa"),
    "oc": ("oci", "", "Occitan", "Occitan"),
    "oj": ("oji", "", "Ojibwa", "ᐊᓂᔑᓈᐯᒧᐎᓐ"),
    "om": ("orm", "", "Oromo", "Afaan Oromoo"),
    "or": ("ori", "", "Oriya", "ଓଡ଼ିଆ"),
    "os": ("oss", "", "Ossetian", "Ирон æвзаг"),
    "pa": ("pan", "", "Punjabi", "ਪੰਜਾਬੀ"),
    "pi": ("pli", "", "Pali", "पाऴि"),
    "pl": ("pol", "", "Polish", "Polski"),
    "ps": ("pus", "", "Pashto", "پښتو"),
    "pt": ("por", "", "Portuguese", "Português"),
    "qu": ("que", "", "Quechua", "Runa Simi"),
    "rm": ("roh", "", "Romansh", "Rumantsch"),
    "rn": ("run", "", "Rundi", "Ikirundi"),
    "ro": ("ron", "rum", "Romanian", "Română"),
    "ru": ("rus", "", "Russian", "Русский"),
    "rw": ("kin", "", "Kinyarwanda", "Ikinyarwanda"),
    "sa": ("san", "", "Sanskrit", "संस्कृतम्"),
    "sc": ("srd", "", "Sardinian", "Sardu"),
    "sd": ("snd", "", "Sindhi", "سنڌي"),
    "se": ("sme", "", "Northern Sami", "Davvisámegiella"),
    "sg": ("sag", "", "Sango", "Sängö"),
    "si": ("sin", "", "Sinhala", "සිංහල"),
    "sk": ("slk", "slo", "Slovak", "Slovenčina"),
    "sl": ("slv", "", "Slovenian", "Slovenščina"),
    "sm": ("smo", "", "Samoan", "Gagana Sāmoa"),
    "sn": ("sna", "", "Shona", "chiShona"),
    "so": ("som", "", "Somali", "Soomaali"),
    "sq": ("sqi", "alb", "Albanian", "Shqip"),
    "sr": ("srp", "", "Serbian", "Српски"),
    "ss": ("ssw", "", "Swati", "SiSwati"),
    "st": ("sot", "", "Southern Sotho", "Sesotho"),
    "su": ("sun", "", "Sundanese", "Basa Sunda"),
    "sv": ("swe", "", "Swedish", "Svenska"),
    "sw": ("swa", "", "Swahili", "Kiswahili"),
    "ta": ("tam", "", "Tamil", "தமிழ்"),
    "te": ("tel", "", "Telugu", "తెలుగు"),
    "tg": ("tgk", "", "Tajik", "Тоҷикӣ"),
    "th": ("tha", "", "Thai", "ไทย"),
    "ti": ("tir", "", "Tigrinya", "ትግርኛ"),
    "tk": ("tuk", "", "Turkmen", "Türkmençe"),
    "tl": ("tgl", "", "Tagalog", "Tagalog"),
    "tn": ("tsn", "", "Tswana", "Setswana"),
    "to": ("ton", "", "Tonga", "Lea faka-Tonga"),
    "tr": ("tur", "", "Turkish", "Türkçe"),
    "ts": ("tso", "", "Tsonga", "Xitsonga"),
    "tt": ("tat", "", "Tatar", "Татар теле"),
    "tw": ("twi", "", "Twi", "Twi"),
    "ty": ("tah", "", "Tahitian", "Reo Tahiti"),
    "ug": ("uig", "", "Uyghur", "ئۇيغۇرچە"),
    "uk": ("ukr", "", "Ukrainian", "Українська"),
    "ur": ("urd", "", "Urdu", "اردو"),
    "uz": ("uzb", "", "Uzbek", "Oʻzbekcha"),
    "ve": ("ven", "", "Venda", "Tshivenḓa"),
    "vi": ("vie", "", "Vietnamese", "Tiếng Việt"),
    "vo": ("vol", "", "Volapük", "Volapük"),
    "wa": ("wln", "", "Walloon", "Walon"),
    "wo": ("wol", "", "Wolof", "Wollof"),
    "xh": ("xho", "", "Xhosa", "isiXhosa"),
    "yi": ("yid", "", "Yiddish", "ייִדיש"),
    "yo": ("yor", "", "Yoruba", "Yorùbá"),
    "za": ("zha", "", "Zhuang", "Saɯ cueŋƅ"),
    "zh": ("zho", "chi", "Chinese", "中文"),
    "zu": ("zul", "", "Zulu", "isiZulu"),
}

# Common languages that have no 639-1 code: 3-letter code -> (English name, native name)
_THREE_LETTER_ONLY: dict[str, tuple[str, str]] = {
    "ast": ("Asturian", "Asturianu"),
    "ceb": ("Cebuano", "Cebuano"),
    "fil": ("Filipino", "Filipino"),
    "gsw": ("Swiss German", "Schwiizertüütsch"),
    "haw": ("Hawaiian", "ʻŌlelo Hawaiʻi"),
    "hmn": ("Hmong", "Hmoob"),
    "yue": ("Cantonese", "粵語"),
    "mul": ("Multiple languages", ""),
    "zxx": ("No linguistic content", ""),
    "qaa": ("Original language", ""),
}

# Withdrawn 639-1 codes and ISO 639-3 individual languages that players know by their
# macrolanguage's code.
_ALIASES = {
    "iw": "he",
    "in": "id",
    "ji": "yi",
    "jw": "jv",
    "mo": "ro",
    "cmn": "zh",
    "arb": "ar",
    "pes": "fa",
    "zsm": "ms",
    "ekk": "et",
    "lvs": "lv",
    "swh": "sw",
    "nob": "nb",
    "nno": "nn",
}

_UNDETERMINED = {"und", "undefined", "undetermined", "unknown"}

_BY_THREE: dict[str, str] = {}
_BY_NAME: dict[str, str] = {}
for _code, (_t, _b, _english, _native) in _TABLE.items():
    _BY_THREE[_t] = _code
    if _b:
        _BY_THREE[_b] = _code
    _BY_NAME[_english.lower()] = _code
    if _native:
        _BY_NAME.setdefault(_native.lower(), _code)
for _code, (_english, _native) in _THREE_LETTER_ONLY.items():
    _BY_NAME.setdefault(_english.lower(), _code)
    if _native:
        _BY_NAME.setdefault(_native.lower(), _code)

# A primary language subtag (2-3 letters) and optional BCP 47 subtags: en, eng, en-US,
# zh-Hans-CN, es-419; "_" is accepted as separator too (en_US from locale names).
_TAG = re.compile(r"^([a-z]{2,3})(?:[-_][a-z0-9]{1,8})*$")


def normalize_language(code: str | None) -> str | None:
    """The form vipe writes: the ISO 639-1 code where one exists, else the 3-letter code.

    Accepts ISO 639-1 ("de"), ISO 639-2/T ("deu") and /B ("ger"), simple BCP 47 tags
    ("de-AT", "pt_BR"; region and script are dropped) and English or native language names
    ("German", "Deutsch"). "und", "" and None give None, and so does text that is neither a
    code nor a known name. An unknown but well-formed code is kept, lower case ("xyz").
    """
    if code is None:
        return None
    text = code.strip().lower()
    if not text or text in _UNDETERMINED:
        return None
    if text in _BY_NAME:
        return _BY_NAME[text]
    match = _TAG.match(text)
    if match is None:
        return None
    primary = match.group(1)
    if primary in _UNDETERMINED:
        return None
    primary = _ALIASES.get(primary, primary)
    if primary in _TABLE:
        return primary
    return _BY_THREE.get(primary, primary)


def is_known_language(code: str | None) -> bool:
    """Whether `code` normalises to a language in the table (not merely a well-formed code).

    Used where a guess must not misfire, such as reading a language from a file name.
    """
    normal = normalize_language(code)
    return normal is not None and (normal in _TABLE or normal in _THREE_LETTER_ONLY)


def english_name(code: str) -> str:
    """The English name of a language ("de" -> "German"); the code itself when unknown."""
    normal = normalize_language(code)
    if normal in _TABLE:
        return _TABLE[normal][2]
    if normal in _THREE_LETTER_ONLY:
        return _THREE_LETTER_ONLY[normal][0]
    return code


def native_name(code: str) -> str:
    """The language's own name ("de" -> "Deutsch"), for `UseNativeLanguageNames` labels.

    Falls back to the English name where the table has no native one, then to the code.
    """
    normal = normalize_language(code)
    if normal in _TABLE:
        return _TABLE[normal][3] or _TABLE[normal][2]
    if normal in _THREE_LETTER_ONLY:
        english, native = _THREE_LETTER_ONLY[normal]
        return native or english
    return code


def iso639_2(code: str) -> str | None:
    """The ISO 639-2/T code ("de" -> "deu"), as MP4 and Matroska track headers store it."""
    normal = normalize_language(code)
    if normal is None:
        return None
    if normal in _TABLE:
        return _TABLE[normal][0]
    return normal if len(normal) == 3 else None
