"""Identifier columns: which landed columns name, reach or identify a person, so they never land.

Every tabular landing reader (clinical files, external feature tables, cases.csv) asks
:func:`screen_columns` about its columns before anything is written; each finding becomes a
quarantine row naming the file, the column, the rule and how many values it held (never a value).
The reader's patient id column is not screened: it is the pseudonymization input (patient_key).

Rules (``Finding.rule``; checked in this order, the first that applies wins)

``identifier_name``
    The column's name, compared case-, width- and spacing-insensitively (NFKC, so full-width
    ``ＭＲＮ`` and ``姓名　`` match; a bracketed note such as ``(18位)`` is ignored), says identifier:
    English (``name``, ``patient name``, ``DOB``, ``MRN``, ``hospital number``, ``phone``,
    ``address``, ``ID card``, ``e-mail``, ...), Chinese (a name containing ``姓名``, ``住院号``,
    ``门诊号``, ``病案号``, ``身份证``, ``出生日期``, ``电话``, ``手机``, ``住址``, ``地址``, ...),
    pinyin (``xingming``, ``zhuyuanhao``, ``shenfenzhenghao``, ...) and the pinyin initials hospital
    information systems use as field names (``XM``, ``ZYH``, ``MZH``, ``BAH``, ``SFZH``, ``CSRQ``,
    ``LXDH``, ``JTZZ``).
``national_id`` / ``phone`` / ``email`` / ``person_name`` / ``birth_date`` (by content)
    At least half (:data:`CONTENT_FRACTION`) of the column's non-empty values are:
    Chinese resident identity numbers (GB 11643-1999: 17 digits and an ISO 7064 MOD 11-2 check
    character, a province code and a valid birth date; or the old 15-digit form with a valid date);
    mainland mobile numbers (``1[3-9]`` + 9 digits, optional +86) or landlines written with an area
    code and a separator (``010-12345678``), North-American numbers, any ``+``-prefixed number;
    e-mail addresses; person names (2-4 Chinese characters starting with a common Chinese surname,
    pinyin words around a common surname such as ``ZHANG Wei`` or ``wei zhang``, or
    ``First Last`` / ``LAST, First`` / ``Last^First`` words none of which is a clinical word),
    with at least 3 distinct names making up >= 70 % of those values (categories such as 阳性/阴性
    or ``Partial Response`` repeat; names do not); dates of birth (dates that put every person at
    0-120 years, in a column whose name is not an event's: spread over >= 10 years between the
    quartiles, median age >= 1, at least 5 values).
``free_text``
    Long, varied strings (half of the values have >= 25 characters in >= 4 words, or >= 15 Chinese
    characters; >= 50 % distinct): notes can name anyone. Kept only when the caller says so (the
    clinical schema declares the column ``type: string``).

Values inside kept text can still carry an identifier (a note that quotes a phone number):
:class:`Redactor` replaces resident ids, mobile numbers, landlines with an area code, e-mail
addresses and every value of the file's dropped identifier columns by ``[redacted]``.

Pure module: no Dagster, no I/O.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import date

from dagster_project.quarantine import Reject

CONTENT_FRACTION = 0.5  # share of non-empty values that must match a content rule
NAME_DISTINCT_FRACTION = 0.7
MIN_DISTINCT_NAMES = 3
BIRTH_MIN_VALUES = 5
BIRTH_MIN_IQR_YEARS = 10
FREE_TEXT_DISTINCT_FRACTION = 0.5
REDACTED = "[redacted]"
SAMPLE_VALUES = 2000  # content rules read at most this many values of a column


def _wordset(text: str) -> frozenset[str]:
    return frozenset(text.split())


# --- by name ---------------------------------------------------------------------------------
# whole names (spaces, underscores, hyphens and dots removed, lower case)
_EXACT_NAMES = _wordset(
    """
    name names id ids fullname patientname patname ptname nameofpatient personname firstname
    lastname givenname familyname surname forename middlename maidenname initials patientinitials
    dob dateofbirth birthdate birthday bday birthdt birthyear yearofbirth yob birthplace birth born
    出生 生辰
    mrn medicalrecordnumber medicalrecordno medicalrecord hospitalnumber hospitalno hospitalid
    hospno inpatientnumber inpatientno inpatientid outpatientnumber outpatientno outpatientid
    admissionnumber admissionno accessionnumber accessionno nationalid nationalidnumber idcard
    idcardno idcardnumber idnumber idno identitycard identitynumber ssn socialsecuritynumber
    nhsnumber nhsno insurancenumber insuranceno insuranceid healthcardnumber passport
    passportnumber passportno address homeaddress streetaddress street city town village county
    zip zipcode postcode postalcode phone phonenumber phoneno telephone tel telno mobile
    mobilephone mobilenumber cellphone contactnumber contactphone contact fax email
    emailaddress mail emergencycontact nextofkin pid ptid patid patientno patientnumber caseno
    casenumber recordno recordnumber doctor physician surgeon nurse radiologist pathologist
    xingming huanzhexingming bingrenxingming hzxm brxm xm zhuyuanhao zhuyuanhaoma zyh menzhenhao
    menzhenhaoma mzh binganhao bingan bah binglihao blh shenfenzheng shenfenzhenghao
    shenfenzhenghaoma sfz sfzh sfzhm zhengjianhao zhengjianhaoma zjh zjhm chushengriqi csrq
    chushengnianyue shengri lianxidianhua lxdh dianhua shouji shoujihao shoujihaoma sjh sjhm
    jiatingzhuzhi jtzz zhuzhi dizhi jiatingdizhi xianzhuzhi youxiang dianziyouxiang youbian
    yibaokahao jiuzhenkahao lianxiren jiguan huji
    """
)  # fmt: skip
# English word sequences anywhere in the name's words ("Patient First Name", "home_phone_2")
_PHRASES = tuple(
    tuple(p.split())
    for p in (
        "first name", "last name", "given name", "family name", "middle name", "full name",
        "patient name", "pt name", "pat name", "maiden name", "name of patient", "date of birth",
        "birth date", "birth day", "birth year", "year of birth", "place of birth", "birth place",
        "medical record", "hospital number", "hospital no", "hospital id", "inpatient number",
        "inpatient no", "outpatient number", "outpatient no", "admission number", "admission no",
        "accession number", "accession no", "national id", "id card", "identity card",
        "identity number", "social security", "insurance number", "insurance no", "health card",
        "nhs number", "nhs no", "passport", "phone", "telephone", "mobile", "cellphone",
        "cell phone", "fax", "email", "e mail", "address", "street", "zip", "zipcode", "postcode",
        "postal code", "mrn", "ssn", "dob", "surname", "forename", "firstname", "lastname",
        "fullname", "patientname", "birthdate", "birthday", "dateofbirth", "contact number",
        "emergency contact", "next of kin",
    )
)  # fmt: skip
# Chinese terms found anywhere in the name (患者姓名, 联系电话1, 身份证号码, 家庭住址)
_CHINESE_TERMS = (
    "姓名", "名字", "患者名", "病人名", "病员名", "住院号", "门诊号", "病案号", "病历号", "病理号",
    "身份证", "证件号", "出生日期", "出生年月", "出生时间", "生日", "电话", "手机", "联系方式",
    "住址", "地址", "邮箱", "电子邮件", "邮编", "医保号", "医保卡", "社保号", "社保卡", "就诊卡",
    "就诊号", "影像号", "放射号", "检查号", "登记号", "流水号", "床号", "联系人", "家属", "监护人",
    "工作单位", "微信", "籍贯", "户籍", "卡号", "患者编号", "病人编号", "患者id", "病人id", "id号", "就诊id", "住院id", "门诊id", "出生地", "医生", "医师", "签名",
)  # fmt: skip
# Pinyin found anywhere in a compacted name (huanzhe_xingming, lianxi_dianhua_2)
_PINYIN_TERMS = (
    "xingming", "zhuyuanhao", "menzhenhao", "binganhao", "binglihao", "shenfenzheng",
    "chushengriqi", "chushengnianyue", "lianxidianhua", "dianhua", "shoujihao", "zhuzhi", "dizhi",
    "youxiang",
)  # fmt: skip
_BRACKETED = re.compile(r"[(\[{【〔][^)\]}】〕]*[)\]}】〕]")
_NOT_WORD = re.compile(r"[\W_]+")
_CAMEL = re.compile(r"(?<=[a-z])(?=[A-Z])")


def normalize_name(name: str) -> str:
    """A column name as compared: NFKC (full width -> ASCII), no bracketed notes, lower case."""
    text = unicodedata.normalize("NFKC", str(name))
    return _BRACKETED.sub(" ", text).strip().lower()


def _words(name: str) -> list[str]:
    text = _BRACKETED.sub(" ", unicodedata.normalize("NFKC", str(name)))
    return [w for w in _NOT_WORD.split(_CAMEL.sub(" ", text).lower()) if w]


def identifier_name(name: str) -> str | None:
    """The identifier term a column name matches (for the reason text), or None."""
    compact = _NOT_WORD.sub("", normalize_name(name))
    if not compact:
        return None
    if compact in _EXACT_NAMES:
        return compact
    for term in _CHINESE_TERMS:
        if term in compact:
            return term
    for term in _PINYIN_TERMS:
        if term in compact:
            return term
    words = _words(name)
    for phrase in _PHRASES:
        n = len(phrase)
        if any(tuple(words[i : i + n]) == phrase for i in range(len(words) - n + 1)):
            return " ".join(phrase)
    return None


# --- Chinese resident identity numbers (GB 11643-1999) ----------------------------------------
_ID_WEIGHTS = (7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2)
_ID_CHECK = "10X98765432"  # check character for (sum of weighted digits) mod 11 = 0, 1, ...
_PROVINCES = _wordset(
    "11 12 13 14 15 21 22 23 31 32 33 34 35 36 37 41 42 43 44 45 46 50 51 52 53 54 61 62 63 64 "
    "65 71 81 82 83 91"
)
_ID18 = re.compile(r"^\d{17}[\dX]$")
_ID15 = re.compile(r"^\d{15}$")


def resident_id_check_character(first17: str) -> str:
    """The ISO 7064 MOD 11-2 check character of the first 17 digits of a resident id."""
    total = sum(int(d) * w for d, w in zip(first17, _ID_WEIGHTS, strict=True))
    return _ID_CHECK[total % 11]


def _valid_date(year: int, month: int, day: int, today: date) -> bool:
    try:
        born = date(year, month, day)
    except ValueError:
        return False
    return date(1880, 1, 1) <= born <= today


_ID_AS_NUMBER = re.compile(r"^([1-9])\.(\d{7,16})[eE]\+?17$")


def is_mangled_resident_id(text: str, today: date | None = None) -> bool:
    """An 18-digit resident id a spreadsheet stored as a number (``1.1010519491231e+17``): the
    check character is lost, but the province and the birth date still read."""
    found = _ID_AS_NUMBER.match(str(text).strip())
    if not found:
        return False
    digits = (found.group(1) + found.group(2)).ljust(14, "0")
    today = today or date.today()
    return digits[:2] in _PROVINCES and _valid_date(
        int(digits[6:10]), int(digits[10:12]), int(digits[12:14]), today
    )


def is_resident_id(text: str, today: date | None = None) -> bool:
    """True for a Chinese resident identity number: 18 characters with a valid province, birth date
    and check character, or the old 15-digit form with a valid province and birth date."""
    value = unicodedata.normalize("NFKC", str(text)).strip().upper()
    today = today or date.today()
    if _ID18.match(value):
        return (
            value[:2] in _PROVINCES
            and _valid_date(int(value[6:10]), int(value[10:12]), int(value[12:14]), today)
            and resident_id_check_character(value[:17]) == value[17]
        )
    if _ID15.match(value):
        year = 1900 + int(value[6:8])
        return value[:2] in _PROVINCES and _valid_date(
            year, int(value[8:10]), int(value[10:12]), today
        )
    return False


# --- phones and e-mail ------------------------------------------------------------------------
_MOBILE = re.compile(r"^(?:\+?86)?1[3-9]\d{9}$")
_LANDLINE = re.compile(
    r"^(?:\+?86[\s-]?)?(?:\(0[1-9]\d{1,2}\)[\s-]?|0[1-9]\d{1,2}[\s-])\d{7,8}(?:[\s-]\d{1,4})?$"
)
_NANP = re.compile(r"^(?:\+?1[\s.-]?)?\(?[2-9]\d{2}\)?[\s.-]?\d{3}[\s.-]\d{4}$")
_INTERNATIONAL = re.compile(r"^\+\d{1,3}[\s.-]?\(?\d{1,4}\)?(?:[\s.-]?\d{2,5}){2,4}$")
_EMAIL_TEXT = r"[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}"
_EMAIL = re.compile(f"^{_EMAIL_TEXT}$")
_SEPARATORS = re.compile(r"[\s().-]")


def is_phone(text: str) -> bool:
    value = unicodedata.normalize("NFKC", str(text)).strip()
    if _MOBILE.match(_SEPARATORS.sub("", value)):
        return True
    return bool(_LANDLINE.match(value) or _NANP.match(value) or _INTERNATIONAL.match(value))


def is_email(text: str) -> bool:
    return bool(_EMAIL.match(unicodedata.normalize("NFKC", str(text)).strip()))


# --- person names -----------------------------------------------------------------------------
# The most common Chinese surnames (about 90 % of the population) and the compound ones.
CHINESE_SURNAMES = frozenset(
    "王李张刘陈杨黄赵吴周徐孙马朱胡郭何林罗高郑梁谢宋唐许韩冯邓曹彭曾肖田董袁潘于蒋蔡余杜叶程苏魏吕丁任"
    "沈姚卢姜崔钟谭陆汪范金石廖贾夏韦付方白邹孟熊秦邱江尹薛闫段雷侯龙史陶黎贺顾毛郝龚邵万钱严覃武戴莫孔"
    "向汤常温康施文牛樊葛邢安齐易乔伍庞颜倪庄聂章鲁岳翟殷詹申欧耿关兰焦俞左柳甘祝包宁尚符舒阮柯纪梅童凌"
    "毕单季裴霍涂成苗谷盛曲翁冉骆蓝路游辛靳管柴蒙鲍华喻祁蒲房滕屈饶解牟艾尤阳时穆农司卓古吉缪简车项连芦"
    "麦褚娄窦戚岑景党宫费卜冷晏席卫米柏宗瞿桂全佟应臧闵苟邬边卞姬师和仇栾隋商刁沙荣巫寇桑郎甄丛仲虞敖巩"
    "明佘池查麻苑迟邝官封谈匡鞠惠荆乐冀郁胥南班储原栗燕楚鄢劳谌奚皮粟冼蔺楼盘满闻位厉伊仝区郜海阚花权强"
    "帅屠豆朴盖练廉禹井祖漆巴丰支卿国狄平计索宣晋相初门云容敬来扈晁芮都普阙浦戈伏鹿薄邸雍辜羊"
)
CHINESE_COMPOUND_SURNAMES = _wordset(
    "欧阳 司马 诸葛 上官 东方 皇甫 尉迟 公孙 慕容 令狐 长孙 宇文 司徒 夏侯 端木 独孤 南宫 西门"
)
# characters of clinical terms and drug names that never occur in given names (阳性, 左肺, 管状,
# 伊马替尼, 吉西他滨, 顺铂)
_NOT_IN_NAMES = frozenset(
    "癌瘤性侧肺肝胃肠术期型级度状移节膜灶腺胞脉管症阴例次替铂醇酯霉胺抗他唑嗪酮酸钠钾片剂囊针液疗诊痛血尿"
)
_CJK_NAME = re.compile(r"^[\u4e00-\u9fff]{2,4}$|^[\u4e00-\u9fff]{1,6}[·•][\u4e00-\u9fff]{1,8}$")
# words of clinical categories, never a name part ("Partial Response", "Left Lobe")
_CLINICAL_WORDS = _wordset(
    """
    left right upper lower middle mid lobe node nodes lymph response partial complete stable
    progressive progression disease grade stage tumor tumour cancer carcinoma adenocarcinoma
    squamous cell cells small large positive negative high low moderate poor poorly well
    differentiated none unknown male female yes no not other mixed type primary metastatic
    metastasis recurrence local distant alive dead death deceased censored event breast lung liver
    gastric stomach colon rectal rectum kidney renal brain head neck prostate bone soft tissue
    sarcoma benign malignant surgery chemotherapy radiotherapy therapy treatment control group arm
    placebo standard dose baseline follow up week month year day pre post ct mr mri pet contrast
    phase arterial venous portal delayed axial coronal sagittal and of the with without in on at
    for to by or normal abnormal absent present mild severe acute chronic invasive ductal lobular
    intestine small bowel pancreas pancreatic ovary ovarian cervix uterus bladder thyroid skin
    melanoma lymphoma leukemia glioma glioblastoma nos rt chemo care center centre hospital clinic
    unit department north south east west new old early late first second third total free
    """
)  # fmt: skip
_NAME_WORD = re.compile(
    r"^(?:(?:[A-Z]['’])?[A-Z][a-z]+(?:[A-Z][a-z]+)?(?:-[A-Z][a-z]+)?|[A-Z]{2,}|[A-Z]\.?)$"
)


_FORMAL_NAME = re.compile(r"^[A-Z][A-Za-z'’-]+(?:, ?|\^)[A-Z][a-z]")


def is_chinese_name(text: str) -> bool:
    value = re.sub(r"\s+", "", str(text))  # "张 伟", as exports pad two-character names
    if not _CJK_NAME.match(value):
        return False
    surname = 2 if value[:2] in CHINESE_COMPOUND_SURNAMES else 1
    if surname == 1 and value[0] not in CHINESE_SURNAMES:
        return False
    return not _NOT_IN_NAMES.intersection(value[surname:])


# common surnames in pinyin, for names exported as "ZHANG WEI", "zhang wei" or "Wei ZHANG"
PINYIN_SURNAMES = _wordset(
    """
    wang li zhang liu chen yang huang zhao wu zhou xu sun ma zhu hu guo he lin luo gao zheng liang
    xie song tang han feng deng cao peng zeng xiao tian dong yuan pan yu jiang cai du ye cheng su
    wei lv lu ding ren shen yao cui zhong tan fan jin shi liao jia xia fu fang bai zou meng xiong
    qin qiu yin xue yan duan lei hou long tao gu mao hao gong shao wan qian dai mo kong xiang
    ouyang situ shangguan zhuge
    """
)
_PINYIN_WORD = re.compile(r"^[a-z]{1,12}$")


def is_pinyin_name(text: str) -> bool:
    """Two or three pinyin words, one of the outer two a common surname: "ZHANG Wei", "li xiaoming"."""
    parts = [p.lower() for p in re.split(r"[\s,^]+", str(text).strip()) if p]
    if not 2 <= len(parts) <= 3 or not all(_PINYIN_WORD.match(p) for p in parts):
        return False
    if any(p in _CLINICAL_WORDS for p in parts):
        return False
    return parts[0] in PINYIN_SURNAMES or parts[-1] in PINYIN_SURNAMES


def is_western_name(text: str) -> bool:
    """``First Last``, ``First M. Last``, ``LAST, First``, ``LAST^First`` (DICOM), ``ZHANG Wei``."""
    value = str(text).strip()
    parts = [p for p in re.split(r"[\s,^]+", value) if p]
    if not 2 <= len(parts) <= 5 or not all(_NAME_WORD.match(p) for p in parts):
        return False
    if any(p.lower().strip(".") in _CLINICAL_WORDS for p in parts):
        return False
    full = [p for p in parts if len(p.strip(".")) >= 2]
    # all-capital words without a comma or caret are an acronym pair ("CT MR"), not a name
    shouting = all(p.isupper() for p in full) and "," not in value and "^" not in value
    return len(full) >= 2 and not shouting


def is_person_name(text: str) -> bool:
    return is_chinese_name(text) or is_western_name(text) or is_pinyin_name(text)


# --- dates ------------------------------------------------------------------------------------
_DATE_PATTERNS = (
    (re.compile(r"^(\d{4})[-/.](\d{1,2})[-/.](\d{1,2})(?:[ T]\d{1,2}:\d{2}(?::\d{2}(?:\.\d+)?)?)?$"), "ymd"),
    (re.compile(r"^(\d{4})年(\d{1,2})月(\d{1,2})日?$"), "ymd"),
    (re.compile(r"^(\d{4})(\d{2})(\d{2})$"), "ymd"),
    (re.compile(r"^(\d{1,2})[-/.](\d{1,2})[-/.](\d{4})$"), "dmy"),
)  # fmt: skip


def parse_date(text: str) -> date | None:
    """A date written as ISO, YYYY/MM/DD, YYYY.MM.DD, YYYYMMDD, YYYY年M月D日, DD/MM/YYYY or
    MM/DD/YYYY (day first when both fit), with an optional time; None otherwise."""
    value = unicodedata.normalize("NFKC", str(text)).strip()
    for pattern, order in _DATE_PATTERNS:
        found = pattern.match(value)
        if not found:
            continue
        a, b, c = (int(g) for g in found.groups())
        candidates = [(a, b, c)] if order == "ymd" else [(c, b, a), (c, a, b)]
        for year, month, day in candidates:
            try:
                return date(year, month, day)
            except ValueError:
                continue
    return None


_EVENT_WORDS = _wordset(
    """
    surgery surg operation op diagnosis diag dx treatment tx therapy start end begin stop visit
    followup follow fu last admission admit discharge death died dod deceased recurrence relapse
    progression scan exam study acquisition acquired series imaging ct mr mri pet biopsy pathology
    report censor censoring event registration enrollment enrolment randomization consent update
    updated created modified record entry sample specimen collection test lab onset symptom
    resection chemo radio rt transplant injection infusion dose contact rec recurrent diagdate
    os pfs rfs dfs efs dss ttp
    """
)  # fmt: skip
_CHINESE_EVENTS = (
    "手术", "诊断", "治疗", "随访", "入院", "出院", "死亡", "复发", "进展", "检查", "扫描", "活检",
    "病理", "化疗", "放疗", "开始", "结束", "末次", "最后", "登记", "入组", "采样", "确诊", "发病",
    "就诊", "报告", "更新", "录入", "转移", "用药",
)  # fmt: skip


def _event_name(name: str) -> bool:
    normalized = normalize_name(name)
    if any(term in normalized for term in _CHINESE_EVENTS):
        return True
    words = _words(name)
    return any(w in _EVENT_WORDS or w.rstrip("s") in _EVENT_WORDS for w in words) or any(
        w.startswith(e) for w in words for e in ("surg", "diag", "recur", "progress", "follow")
    )


def _looks_like_birth_dates(name: str, values: Sequence[str], today: date) -> bool:
    if len(values) < BIRTH_MIN_VALUES or _event_name(name):
        return False
    dates = [d for d in map(parse_date, values) if d is not None]
    if len(dates) < CONTENT_FRACTION * len(values):
        return False
    ages = sorted((today - d).days / 365.25 for d in dates)
    inside = sum(1 for a in ages if 0 <= a <= 120)
    if inside < 0.95 * len(ages):
        return False
    q1, median, q3 = (ages[int(p * (len(ages) - 1))] for p in (0.25, 0.5, 0.75))
    return q3 - q1 >= BIRTH_MIN_IQR_YEARS and median >= 1


# --- free text --------------------------------------------------------------------------------
_CJK = re.compile(r"[\u4e00-\u9fff]")


def is_text_like(text: str) -> bool:
    value = str(text).strip()
    return (len(value) >= 25 and len(value.split()) >= 4) or len(_CJK.findall(value)) >= 15


# --- the screen -------------------------------------------------------------------------------
@dataclass(frozen=True)
class Finding:
    """One column that must not land: its name, the rule, why (no values) and how many values."""

    column: str
    rule: str
    evidence: str
    count: int  # non-empty values the column held

    @property
    def detail(self) -> str:
        """What was dropped and why, without the file: "column 'X' was dropped ... none stored"."""
        what = "free text" if self.rule == "free_text" else "an identifier"
        return (
            f"column '{self.column}' was dropped before loading as {what} ({self.evidence}); "
            f"{self.count} non-empty values, none stored"
        )

    @property
    def todo(self) -> str:
        if self.rule == "free_text":
            return "to keep it, declare the column `type: string` in landing/clinical/schema.yaml"
        return "identifiers never land; patients are linked through patient_key"

    def reject(self, source_path: str, target_table: str) -> Reject:
        return Reject(
            source_path,
            target_table,
            self.rule,
            f"{self.rule}: {source_path} {self.detail} ({self.todo})",
            record=f"column {self.column}",
        )


def _plain(value: object) -> str:
    """A cell as text for the content rules: 13812345678.0 (a spreadsheet number) -> 13812345678."""
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    text = str(value).strip()
    return text[:-2] if text.endswith(".0") and text[:-2].isdigit() else text


def screen_column(
    name: str, values: Iterable[object], *, keep_free_text: bool = False, today: date | None = None
) -> Finding | None:
    """The finding for one column (``values``: its non-empty cells), or None when it may land.

    Content rules read at most :data:`SAMPLE_VALUES` values, evenly spread over the column (the
    shares they decide on are then known to about +-2 %); ``count`` is always the full count.
    """
    cells = [_plain(v) for v in values if v is not None and str(v).strip()]
    count = len(cells)
    term = identifier_name(name)
    if term:
        return Finding(
            name, "identifier_name", f"its name matches the identifier term '{term}'", count
        )
    if not cells:
        return None
    today = today or date.today()
    texts = cells[:: -(-count // SAMPLE_VALUES)]
    read = f"{len(texts)} {'sampled ' if len(texts) < count else ''}values"
    needed = CONTENT_FRACTION * len(texts)
    for rule, test, what in (
        ("national_id", lambda v: is_resident_id(v, today), "Chinese resident identity numbers with a valid check character"),
        ("national_id", lambda v: is_mangled_resident_id(v, today), "Chinese resident identity numbers stored as numbers"),
        ("phone", is_phone, "telephone numbers"),
        ("email", is_email, "e-mail addresses"),
    ):  # fmt: skip
        hits = sum(1 for v in texts if test(v))
        if hits and hits >= needed:
            return Finding(name, rule, f"{hits} of {read} are {what}", count)
    names = [v for v in texts if is_person_name(v)]
    distinct = len(set(names))
    # "LAST, First" and DICOM "Last^First" are names even when few people repeat (the doctors)
    formal = sum(1 for v in names if _FORMAL_NAME.match(v))
    if (
        len(names) >= needed
        and distinct >= MIN_DISTINCT_NAMES
        and (distinct >= NAME_DISTINCT_FRACTION * len(names) or formal >= needed)
    ):
        return Finding(
            name,
            "person_name",
            f"{len(names)} of {read} look like person names ({distinct} distinct)",
            count,
        )
    if _looks_like_birth_dates(name, texts, today):
        return Finding(
            name,
            "birth_date",
            "dates that put every person at 0-120 years, spread like birth dates, "
            "in a column not named after an event",
            count,
        )
    if not keep_free_text:
        long = sum(1 for v in texts if is_text_like(v))
        if long and long >= needed and len(set(texts)) >= FREE_TEXT_DISTINCT_FRACTION * len(texts):
            return Finding(name, "free_text", f"{long} of {read} are long, varied text", count)
    return None


def screen_columns(
    columns: Mapping[str, Iterable[object]],
    *,
    free_text_ok: Collection[str] = (),
    today: date | None = None,
) -> list[Finding]:
    """Findings for every column that must not land, in column order."""
    found = []
    for name, values in columns.items():
        finding = screen_column(name, values, keep_free_text=name in free_text_ok, today=today)
        if finding:
            found.append(finding)
    return found


def shown_header(name: str) -> str:
    """A header cell as a reject reason may quote it: ``[redacted]`` when the "header" is really a
    value that identifies someone (a headerless file's first row: a name, an id, a phone number,
    a birth date, a long number)."""
    text = _plain(name)
    looks_like_value = (
        is_resident_id(text)
        or is_mangled_resident_id(text)
        or is_phone(text)
        or is_email(text)
        or is_chinese_name(text)
        or is_western_name(text)
        or parse_date(text) is not None
        or (text.isdigit() and len(text) >= 6)
    )
    return REDACTED if looks_like_value else name


# --- identifiers inside kept text -------------------------------------------------------------
_EMBEDDED = re.compile(
    r"(?<![0-9A-Za-z])(?:\d{17}[\dXx]|\d{15})(?![0-9A-Za-z])"  # resident ids
    r"|(?<!\d)(?:\+?86[\s-]?)?1[3-9]\d(?:[\s-]?\d{4}){2}(?!\d)"  # mobile numbers
    r"|(?<![\d-])(?:\(0[1-9]\d{1,2}\)|0[1-9]\d{1,2}-)\d{7,8}(?!\d)"  # landlines with area code
    rf"|{_EMAIL_TEXT}"  # e-mail addresses
)


def quotable(value: str) -> bool:
    """Whether a dropped value is specific enough to look for inside other text: a Chinese name
    (2+ characters), a number of 6+ digits, anything else of 4+ characters. A bed number "12"
    must not blank the "12" of "2012"."""
    if value.isdigit():
        return len(value) >= 6
    return len(value) >= 4 or (len(value) >= 2 and not value.isascii())


class Redactor:
    """Replaces identifiers inside kept text by ``[redacted]``: resident ids (checksum-valid), mobile
    numbers, landlines written with an area code, e-mail addresses, and any of ``values`` (the
    file's dropped identifier values that are specific enough, see :func:`quotable`; found by a lookup
    per position and length, not by a huge regex over thousands of names).
    A cell that is a date as a whole is left alone (someone's birth date may equal a surgery date)."""

    def __init__(self, values: Iterable[object] = ()):
        self._values = {w for w in (_plain(v) for v in values if v is not None) if quotable(w)}
        self._lengths = sorted({len(w) for w in self._values}, reverse=True)
        self._memo: dict[str, str] = {}  # categories repeat: each distinct text is read once

    def _embedded(self, found: re.Match) -> str:
        text = found.group(0)
        if text[0].isdigit() and len(text) in (15, 18) and text.isalnum():
            return REDACTED if is_resident_id(text) else text
        return REDACTED

    def __call__(self, text: str) -> str:
        out = self._memo.get(text)
        if out is None:
            out = self._memo[text] = self._redact(text)
        return out

    def _redact(self, text: str) -> str:
        if parse_date(text) is not None:
            return text
        out = _EMBEDDED.sub(self._embedded, text)
        if not self._values or len(out) < self._lengths[-1]:
            return out
        parts, start, i = [], 0, 0
        while i < len(out):
            length = next((n for n in self._lengths if out[i : i + n] in self._values), 0)
            if length:
                parts.append(out[start:i] + REDACTED)
                i += length
                start = i
            else:
                i += 1
        return "".join(parts) + out[start:] if parts else out
