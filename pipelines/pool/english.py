"""Is a caption English? A small word-list heuristic standing in for fastText language id.

DataComp's basic filter keeps captions that fastText's ``lid.176`` model labels ``en``. No
language-id model can be downloaded here, so this module decides from evidence that is cheap
and explainable:

1. letters: a caption without letters ("2020", "!!!") has no language -> not English;
   mostly non-Latin letters (Cyrillic, CJK, Arabic, ...) -> not English;
2. word lists: each lower-cased word is looked up in a list of common English words and in a
   list of common German, French, Spanish, Italian, Portuguese and Dutch words (function words,
   numbers, colours, frequent nouns). Words on both lists ("in", "orange", "triangle") count for
   neither side. A word with letters English does not use (ä, é, ñ, ß, ...) counts as foreign;
3. decision: English when the English hits are at least the foreign hits. With no hit on
   either side (short alt text such as "vintage leather handbag") the caption is plain Latin
   text without foreign marks, and is given the benefit of the doubt: English.

Known limits: it cannot tell English from languages it has no list for when those captions
contain no accented letters (e.g. Indonesian), and a caption mixing languages follows its
majority. It is a gate against obviously foreign captions, not a language identifier.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass

# Frequent English words (function words, numbers, colours, common caption nouns/verbs).
_ENGLISH_RAW = """
    a an the and or but nor of in on at to from by with without for about above below over under
    into onto out up down off near next behind between beside inside outside around through across
    along against among is are was were be been being am has have had having do does did done will
    would can could should may might must shall this that these those there here where when what
    which who whom whose why how it its it's they them their theirs he him his she her hers we us
    our you your i me my mine not no yes very more most less least many much some any all each
    every both few other another such only just also too so than then as if because while after
    before again once one two three four five six seven eight nine ten first second third new old
    big small large little tall short long wide great good best better high low left right top
    bottom center centre middle front back side full empty open closed hot cold dark light bright
    red orange yellow green blue purple pink brown black white gray grey gold silver colorful
    man woman men women boy girl child children people person baby family friend dog cat bird horse
    car house home room table chair bed door window wall floor street road city tree trees flower
    flowers water sea beach sky sun day night food book phone picture photo image drawing painting
    view background shape shapes object objects circle circles square squares triangle triangles
    star stars cross crosses heart hearts line lines pattern striped dotted checkered plain with
    showing shows show made make set sale buy free online best new style design vintage modern
    hat van per art
"""

# Frequent words of German, French, Spanish, Italian, Portuguese and Dutch.
_FOREIGN_RAW = """
der die das den dem des ein eine einer eines einem einen und oder aber nicht mit auf aus bei
von vom zum zur ist sind war waren wird werden hat haben auch noch nur sehr mehr wie wo was wer
ich du er sie wir ihr es mein dein sein unser zwei drei vier fünf sechs sieben acht neun zehn
rot rote roter rotes roten rotem blau blaue blauer blaues blauen blauem gelb gelbe gelber gelbes
gelben gelbem grün grüne grüner grünes grünen grünem schwarz schwarze schwarzer schwarzes
schwarzen schwarzem weiß weiße weißer weißes weißen weißem lila klein kleine kleiner kleines
kleinen groß große großer großes großen kreis kreise quadrat quadrate dreieck dreiecke stern
sterne kreuz kreuze herz herzen hintergrund gestreift gestreiftem gepunktet gepunktetem kariert
kariertem bild foto neue neuer neues für über unter zwischen vor nach
le la les un une des du au aux et ou mais avec sans pour par sur sous dans chez est sont était
être avoir qui que quoi dont où ce cette ces mon ton son notre votre leur deux trois quatre cinq
six sept huit neuf dix rouge rouges jaune jaunes vert verte verts vertes bleu bleue bleus bleues
violet violette violets violettes blanc blanche blancs blanches noir noire noirs noires petit
petite petits petites grand grande grands grandes cercle cercles carré carrés étoile étoiles
croix cœur cœurs fond uni rayures pois carreaux photo nouveau nouvelle très triangle triangles orange
el los las una unos unas y o pero con sin para por sobre bajo entre en es son era fue está están
muy más menos que quien como donde cuando este esta estos estas ese esa mi tu su nuestro dos tres
cuatro cinco seis siete ocho nueve diez rojo roja rojos rojas amarillo amarilla amarillos
amarillas verde verdes azul azules morado morada morados moradas blanco blanca blancos blancas
negro negra negros negras naranja naranjas pequeño pequeña pequeños pequeñas grande grandes
círculo círculos cuadrado cuadrados triángulo triángulos estrella estrellas cruz cruces corazón
corazones fondo liso rayas lunares cuadros nuevo nueva foto imagen
il lo gli uno della delle degli del di da per con su tra fra che non sono è essere questo questa
rosso rossa rossi giallo gialla verde blu nero nera bianco bianca piccolo piccola grande nuovo
o os um uma uns umas do da dos das no na nos nas em com sem para pelo pela é são muito vermelho
amarelo azul preto branco pequeno novo
het een en van op aan met voor zijn niet ook naar bij uit wat wie waar twee drie vier vijf rood
geel groen blauw zwart wit klein groot nieuw
"""

# Words in both lists ("in", "also", "orange", "triangle", "photo") are evidence of nothing.
SHARED_WORDS: frozenset[str] = frozenset(_FOREIGN_RAW.split()) & frozenset(_ENGLISH_RAW.split())
ENGLISH_WORDS: frozenset[str] = frozenset(_ENGLISH_RAW.split()) - SHARED_WORDS
FOREIGN_WORDS: frozenset[str] = frozenset(_FOREIGN_RAW.split()) - SHARED_WORDS

# Letters English text does not use; one in a word marks that word as foreign.
_FOREIGN_LETTERS = set("äöüßàâæçéèêëîïôœùûÿñáíóúãõåøì")
_WORD = re.compile(r"[^\W\d_]+(?:'[^\W\d_]+)?")
# Latin script ends at U+024F (Latin Extended-B); letters above are another script.
_LATIN_MAX = 0x024F


@dataclass(frozen=True)
class LanguageEvidence:
    words: int
    english_hits: int
    foreign_hits: int
    letters: int
    non_latin_letters: int

    @property
    def non_latin_share(self) -> float:
        return self.non_latin_letters / self.letters if self.letters else 0.0


def language_evidence(text: str) -> LanguageEvidence:
    """Count the evidence :func:`is_english` decides on."""
    text = unicodedata.normalize("NFC", text).lower()
    letters = [ch for ch in text if ch.isalpha()]
    words = _WORD.findall(text)
    english = foreign = 0
    for word in words:
        if word in ENGLISH_WORDS:
            english += 1
        elif word in FOREIGN_WORDS or any(ch in _FOREIGN_LETTERS for ch in word):
            foreign += 1
    return LanguageEvidence(
        words=len(words),
        english_hits=english,
        foreign_hits=foreign,
        letters=len(letters),
        non_latin_letters=sum(1 for ch in letters if ord(ch) > _LATIN_MAX),
    )


def is_english(text: str) -> bool:
    """True when the caption reads as English (see the module docstring for the rules)."""
    ev = language_evidence(text)
    if ev.letters == 0 or ev.non_latin_share > 0.3:
        return False
    return ev.english_hits >= ev.foreign_hits
