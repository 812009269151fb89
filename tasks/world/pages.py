"""One HTML page of the world: its source text, the WAT view of it, and the manifest rows of its images.

The HTML and the WAT `HTML-Metadata` are built side by side from the same pieces, so a
WARC-based extractor (parsing the HTML) and a WAT-based one see the same `<img>` tags.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

from tasks.status import PairStatus
from tasks.world.behaviours import BEHAVIOURS, reserved_images, unreserved
from tasks.world.captions import ALT_CASES, Alt, make_alt, pick_alt_case
from tasks.world.scenes import image_spec
from tasks.world.srcs import BAD_SRC_STATUS, SRC_CASES, Resolver, make_src, pick_src_case

MIN_ALT_LENGTH, MAX_ALT_LENGTH = 5, 4096  # ExtractSettings defaults (LAION-400M)
# charset -> (page language, weight); non-UTF-8 pages hold text of their own script.
CHARSETS = {"utf-8": ("en", 70), "windows-1251": ("ru", 8), "shift_jis": ("ja", 7),
            "iso-8859-1": ("de", 5), "gb2312": ("zh", 5)}
LATIN1_LANGS = ("de", "fr")
DECLARATIONS = ("header", "meta", "meta_http_equiv", "both")
SECTIONS = ("news", "blog", "shop", "gallery", "travel", "wiki")
HOME = {"en": "Home", "de": "Startseite", "fr": "Accueil", "ru": "Главная", "ja": "ホーム", "zh": "首页"}
ANCHOR_WORDS = {"en": "Read more about {}", "de": "Mehr über {}", "fr": "En savoir plus sur {}",
                "ru": "Подробнее о {}", "ja": "{}の詳細", "zh": "关于{}的更多信息"}


@dataclass(frozen=True)
class Occurrence:
    """One `<img>` tag: a row of manifest/pairs.parquet (file columns added by the writer)."""

    page_url: str
    src: str
    alt: str | None
    url: str | None
    text: str | None
    status: str
    case: str
    src_case: str
    alt_case: str
    charset: str
    image_id: int
    matches: bool
    shared: bool


@dataclass
class Page:
    url: str
    charset: str
    declared: str
    language: str
    html: str = ""
    head: dict = field(default_factory=dict)
    links: list[dict] = field(default_factory=list)
    images: list[Occurrence] = field(default_factory=list)

    @property
    def content_type(self) -> str:
        return f"text/html; charset={self.charset}" if self.declared in ("header", "both") else "text/html"


def as_written(text: str, charset: str) -> str:
    """What survives in a page of `charset`: characters it cannot encode become numeric references."""
    if charset == "utf-8":
        return text
    return text.encode(charset, "xmlcharrefreplace").decode(charset)


def status_of(src_case: str, alt: Alt) -> PairStatus:
    if src_case in BAD_SRC_STATUS:
        return BAD_SRC_STATUS[src_case]
    if alt.text is None:
        return PairStatus.NO_ALT
    if len(alt.text) < MIN_ALT_LENGTH:
        return PairStatus.ALT_TOO_SHORT
    if len(alt.text) > MAX_ALT_LENGTH:
        return PairStatus.ALT_TOO_LONG
    return PairStatus.KEPT


@dataclass(frozen=True)
class SharedPair:
    """An `<img>` repeated verbatim on many pages (logos, banners): the source of cross-file duplicates."""

    image_id: int
    src: str
    alt: str
    matches: bool


def shared_pairs(seed: int, n: int, images: int, sites: int) -> list[SharedPair]:
    rng = random.Random(f"shared:{seed}")
    pairs = []
    for _ in range(n):
        image_id = unreserved(rng.randrange(images), images, sites)
        spec = image_spec(seed, image_id)
        src = make_src("abs_http", image_id, spec.format, image_id % sites, Resolver("http", "-", "/-/-/"), rng)
        alt = make_alt("caption", spec.scene, "en", rng)
        pairs.append(SharedPair(image_id, src.url, alt.written, True))
    return pairs


class PageBuilder:
    """Builds pages of one WAT/WARC file; `rng` is the file's own, so files are independent."""

    def __init__(self, seed: int, sites: int, images: int, shared: list[SharedPair], rng: random.Random,
                 links_per_page: tuple[int, int], images_per_page: tuple[int, int]):
        self.seed, self.sites, self.images, self.shared, self.rng = seed, sites, images, shared, rng
        self.links_per_page, self.images_per_page = links_per_page, images_per_page

    def page(self, url_id: str, showcase: bool = False, with_base: bool | None = None) -> Page:
        rng = self.rng
        site = rng.randrange(self.sites)
        charset = "utf-8" if showcase else rng.choices(list(CHARSETS), [w for _, w in CHARSETS.values()])[0]
        language = CHARSETS[charset][0]
        if charset == "iso-8859-1":
            language = rng.choice(LATIN1_LANGS)
        declared = rng.choice(DECLARATIONS)
        scheme = rng.choice(("http", "https"))
        host = f"www.site-{site}.world.test"
        directory = f"/{rng.choice(SECTIONS)}/{rng.randint(2015, 2099)}/"
        page = Page(f"{scheme}://{host}{directory}{url_id}.html", charset, declared, language)
        resolver = Resolver(scheme, host, directory)
        base = None
        if with_base if with_base is not None else rng.random() < 0.08:
            base = f"http://static.site-{site}.world.test/assets/v{rng.randint(1, 9)}/"
            resolver = Resolver("http", f"static.site-{site}.world.test", base.split(".test", 1)[1])
        self._fill(page, site, resolver, base, showcase)
        return page

    def _img_cases(self, showcase: bool) -> list[tuple[str, str]]:
        rng = self.rng
        if showcase:
            return [(s, "caption") for s in SRC_CASES] + [("abs_http", a) for a in ALT_CASES]
        lo, hi = self.images_per_page
        n = 0 if rng.random() < 0.1 else rng.randint(lo, hi)
        cases = []
        for _ in range(n):
            src_case = pick_src_case(rng)
            # A bad src is dropped for its URL whatever the alt, so pair it with a plain caption.
            cases.append((src_case, "caption" if src_case in BAD_SRC_STATUS else pick_alt_case(rng)))
        return cases

    def _fill(self, page: Page, site: int, res: Resolver, base: str | None, showcase: bool) -> None:
        rng, cs, lang = self.rng, page.charset, page.language
        title = as_written(f"{HOME[lang]} · site {site} · {page.url.rsplit('/', 1)[1]}", cs)
        metas: list[dict] = []
        head = [f'<!DOCTYPE html>\n<html lang="{lang}">\n<head>\n']
        if page.declared in ("meta", "both"):
            head.append(f'<meta charset="{cs}">\n')
            metas.append({"charset": cs})
        elif page.declared == "meta_http_equiv":
            head.append(f'<meta http-equiv="Content-Type" content="text/html; charset={cs}">\n')
            metas.append({"http-equiv": "Content-Type", "content": f"text/html; charset={cs}"})
        head.append(f"<title>{title}</title>\n")
        if base:
            head.append(f'<base href="{base}">\n')
        head.append('<meta name="viewport" content="width=device-width, initial-scale=1">\n')
        metas.append({"name": "viewport", "content": "width=device-width, initial-scale=1"})
        link = [{"path": "LINK@/href", "url": "/static/site.css", "rel": "stylesheet"},
                {"path": "LINK@/href", "url": "/favicon.ico", "rel": "icon"},
                {"path": "LINK@/href", "url": page.url, "rel": "canonical"}]
        head += [f'<link rel="{x["rel"]}" href="{x["url"]}">\n' for x in link]
        head.append('<script src="/static/app.js"></script>\n<style>body { background: url(/static/bg.png) }</style>\n')
        page.head = {"Title": title, **({"Base": base} if base else {}), "Metas": metas, "Link": link,
                     "Scripts": [{"path": "SCRIPT@/src", "url": "/static/app.js"}]}
        links = [{"path": "STYLE/#text", "url": "/static/bg.png"}]
        body = ["</head>\n<body>\n<nav>"]
        for i, name in enumerate((HOME[lang], "About", "Contact", "Archive")):
            href = ("/", "/about.html", "/contact.html", "/archive/")[i]
            body.append(f'<a href="{href}">{as_written(name, cs)}</a> ')
            links.append({"path": "A@/href", "url": href, "text": as_written(name, cs)})
        body.append("</nav>\n<article>\n")
        cases = self._img_cases(showcase)
        n_anchors = rng.randint(*self.links_per_page)
        n_shared = 0 if showcase or not cases else rng.choice((0, 0, 1, 1, 2))
        items = ["a"] * n_anchors + ["img"] * len(cases) + ["shared"] * n_shared
        if not showcase:
            rng.shuffle(items)
        case_iter = iter(cases)
        for item in items:
            if item == "a":
                target = f"/{rng.choice(SECTIONS)}/{rng.randint(2015, 2099)}/p-{rng.randrange(10**6)}.html"
                text = as_written(ANCHOR_WORDS[lang].format(rng.choice(SECTIONS)), cs)
                body.append(f'<p><a href="{target}">{text}</a></p>\n')
                links.append({"path": "A@/href", "url": target, "text": text})
            elif item == "img":
                self._img(page, site, res, *next(case_iter), body, links)
            else:
                self._shared(page, rng.choice(self.shared), body, links)
        if showcase:
            for image_id, behaviour in reserved_images(self.seed):
                for scheme in BEHAVIOURS[behaviour].schemes:
                    self._behaviour_img(page, image_id, behaviour, scheme, body, links)
        body.append("</article>\n<footer><a href=\"/impressum.html\">Impressum</a></footer>\n</body>\n</html>\n")
        links.append({"path": "A@/href", "url": "/impressum.html", "text": "Impressum"})
        page.html = "".join(head + body)
        page.links = links

    def _behaviour_img(self, page: Page, image_id: int, behaviour: str, scheme: str,
                       body: list[str], links: list[dict]) -> None:
        """A showcase `<img>` of a reserved image, linked where its behaviour shows (its own host, if any)."""
        spec = image_spec(self.seed, image_id)
        host = BEHAVIOURS[behaviour].host or f"img.site-{image_id % self.sites}.world.test"
        url = f"{scheme}://{host}/images/{image_id:06d}.{spec.format}"
        alt = make_alt("caption", spec.scene, page.language, self.rng)
        body.append(f'<img src="{url}" alt="{alt.written}" width="{spec.width}" height="{spec.height}">\n')
        links.append({"path": "IMG@/src", "url": url, "alt": alt.written})
        case = "abs_https" if scheme == "https" else "abs_http"
        page.images.append(Occurrence(page.url, url, alt.written, url, alt.text, str(status_of(case, alt)),
                                      f"{case}+caption+behaviour_{behaviour}", case, "caption", page.charset,
                                      image_id, alt.matches, False))

    def _img(self, page: Page, site: int, res: Resolver, src_case: str, alt_case: str,
             body: list[str], links: list[dict]) -> None:
        rng = self.rng
        image_id = (rng.randrange(self.images // self.sites) * self.sites + site) % self.images \
            if rng.random() < 0.85 else rng.randrange(self.images)
        image_id = unreserved(image_id, self.images, self.sites)
        spec = image_spec(self.seed, image_id)
        src = make_src(src_case, image_id, spec.format, image_id % self.sites, res, rng)
        alt = make_alt(alt_case, spec.scene, page.language, rng)
        written_alt = None if alt.written is None else as_written(alt.written, page.charset)
        status = status_of(src_case, alt)
        tag, entry = [f'<img src="{src.written}"'], {"path": "IMG@/src", "url": src.written}
        if written_alt is not None:
            tag.append(f' alt="{written_alt}"')
            entry["alt"] = written_alt
        if rng.random() < 0.15:
            title = as_written(rng.choice(("Zoom", "Click to enlarge", "Photo")), page.charset)
            tag.append(f' title="{title}"')
            entry["title"] = title
        longdesc = rng.random() < 0.03
        if longdesc:
            tag.append(' longdesc="/desc/long.html"')
        tag.append(f' width="{spec.width}" height="{spec.height}">\n')
        body.append("".join(tag))
        links.append(entry)
        if longdesc:
            links.append({"path": "IMG@/longdesc", "url": "/desc/long.html"})
        labels = [src_case, alt_case] + ([f"charset_{page.charset}"] if page.charset != "utf-8" else [])
        if page.head.get("Base") and src_case in ("relative_parent", "relative_same", "root_relative",
                                                  "protocol_relative"):
            labels.append("base_href")
        page.images.append(Occurrence(
            page.url, src.written, written_alt, src.url, alt.text, str(status), "+".join(labels), src_case,
            alt_case, page.charset, image_id, alt.matches, False))

    def _shared(self, page: Page, pair: SharedPair, body: list[str], links: list[dict]) -> None:
        body.append(f'<img src="{pair.src}" alt="{pair.alt}">\n')
        links.append({"path": "IMG@/src", "url": pair.src, "alt": pair.alt})
        page.images.append(Occurrence(page.url, pair.src, pair.alt, pair.src, pair.alt, str(PairStatus.KEPT),
                                      "abs_http+caption+shared", "abs_http", "caption", page.charset,
                                      pair.image_id, pair.matches, True))
