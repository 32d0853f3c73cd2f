"""Language codes: the English names used in prompts, and the code systems of the corpora in shared/data.

The project speaks ISO 639-1 everywhere (`en`, `zh`, `sw`). Prompts need the English name ("Answer in Chinese:"),
Tatoeba files use ISO 639-3 with its own choices (`cmn` for Mandarin, `pes` for Persian, `lvs` for Latvian) and
FLORES-200 / SIB-200 folders use `<639-3>_<script>` (`zho_Hans`, `arb_Arab`). These tables are the single place
where those systems meet.
"""
from __future__ import annotations

# The 52 Bactrian-X languages with the exact names of the reference `lang_dict.py` (they appear verbatim in
# "Answer in {name}:" and "Translate into {name}:", so changing one changes the training text).
BACTRIAN_X_NAMES = {
    "af": "Afrikaans", "ar": "Arabic", "az": "Azerbaijani", "bn": "Bengali", "cs": "Czech", "de": "German",
    "en": "English", "es": "Spanish", "et": "Estonian", "fa": "Persian", "fi": "Finnish", "fr": "French",
    "gl": "Galician", "gu": "Gujarati", "he": "Hebrew", "hi": "Hindi", "hr": "Croatian", "id": "Indonesian",
    "it": "Italian", "ja": "Japanese", "ka": "Georgian", "kk": "Kazakh", "km": "Khmer", "ko": "Korean",
    "lt": "Lithuanian", "lv": "Latvian", "mk": "Macedonian", "ml": "Malayalam", "mn": "Mongolian", "mr": "Marathi",
    "my": "Burmese", "ne": "Nepali", "nl": "Dutch", "pl": "Polish", "ps": "Pashto", "pt": "Portuguese",
    "ro": "Romanian", "ru": "Russian", "si": "Sinhala", "sl": "Slovene", "sv": "Swedish", "sw": "Swahili",
    "ta": "Tamil", "te": "Telugu", "th": "Thai", "tl": "Tagalog", "tr": "Turkish", "uk": "Ukrainian", "ur": "Urdu",
    "vi": "Vietnamese", "xh": "Xhosa", "zh": "Chinese",
}

# Evaluation / parallel-data languages in shared/data that Bactrian-X does not cover.
EXTRA_NAMES = {
    "bg": "Bulgarian", "el": "Greek", "eu": "Basque", "ht": "Haitian Creole", "no": "Norwegian", "qu": "Quechua",
}

LANGUAGE_NAMES = {**BACTRIAN_X_NAMES, **EXTRA_NAMES}

# ISO 639-1 -> Tatoeba file code, for every language above that has a file in shared/data/tatoeba/v1.
TATOEBA_CODES = {
    "af": "afr", "ar": "ara", "az": "aze", "bg": "bul", "bn": "ben", "cs": "ces", "de": "deu", "el": "ell",
    "en": "eng", "es": "spa", "et": "est", "eu": "eus", "fa": "pes", "fi": "fin", "fr": "fra", "gl": "glg",
    "he": "heb", "hi": "hin", "hr": "hrv", "id": "ind", "it": "ita", "ja": "jpn", "ka": "kat", "kk": "kaz",
    "km": "khm", "ko": "kor", "lt": "lit", "lv": "lvs", "mk": "mkd", "ml": "mal", "mn": "mon", "mr": "mar",
    "nl": "nld", "no": "nob", "pl": "pol", "pt": "por", "ro": "ron", "ru": "rus", "sl": "slv", "sv": "swe",
    "sw": "swh", "ta": "tam", "te": "tel", "th": "tha", "tl": "tgl", "tr": "tur", "uk": "ukr", "ur": "urd",
    "vi": "vie", "xh": "xho", "zh": "cmn",
}

# ISO 639-1 -> FLORES-200 code, for every language folder in shared/data/sib200_flores (zh = Simplified).
FLORES_CODES = {
    "ar": "arb_Arab", "bg": "bul_Cyrl", "bn": "ben_Beng", "de": "deu_Latn", "el": "ell_Grek", "en": "eng_Latn",
    "es": "spa_Latn", "et": "est_Latn", "eu": "eus_Latn", "fa": "pes_Arab", "fi": "fin_Latn", "fr": "fra_Latn",
    "he": "heb_Hebr", "hi": "hin_Deva", "ht": "hat_Latn", "id": "ind_Latn", "it": "ita_Latn", "ja": "jpn_Jpan",
    "ko": "kor_Hang", "my": "mya_Mymr", "nl": "nld_Latn", "pl": "pol_Latn", "pt": "por_Latn", "qu": "quy_Latn",
    "ru": "rus_Cyrl", "sw": "swh_Latn", "ta": "tam_Taml", "te": "tel_Telu", "th": "tha_Thai", "tr": "tur_Latn",
    "uk": "ukr_Cyrl", "ur": "urd_Arab", "vi": "vie_Latn", "zh": "zho_Hans",
}


class UnknownLanguageError(ValueError):
    pass


def _lookup(table: dict[str, str], code: str, what: str) -> str:
    try:
        return table[code]
    except KeyError:
        raise UnknownLanguageError(f"no {what} for language code {code!r}; known: {' '.join(sorted(table))}") \
            from None


def language_name(code: str) -> str:
    """English name used inside prompts, e.g. `zh` -> `Chinese`."""
    return _lookup(LANGUAGE_NAMES, code, "English name")


def tatoeba_code(code: str) -> str:
    """Tatoeba file code, e.g. `zh` -> `cmn` (files `tatoeba.cmn-eng.{cmn,eng}`)."""
    return _lookup(TATOEBA_CODES, code, "Tatoeba code")


def flores_code(code: str) -> str:
    """FLORES-200 / SIB-200 folder name, e.g. `zh` -> `zho_Hans`."""
    return _lookup(FLORES_CODES, code, "FLORES-200 code")
