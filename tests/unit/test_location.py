"""Locating reports: gazetteer files, the spaCy + jieba extractor, and real citizen messages."""

from __future__ import annotations

import csv
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from crm_backend.dispatch.location import (
    MAX_TEXT_CHARS,
    Gazetteer,
    GazetteerError,
    LocationExtractor,
    LocationResult,
    _clean,
)

REPO = Path(__file__).resolve().parents[2]
GAZETTEER_DIR = REPO / "crm_backend" / "dispatch" / "data" / "gazetteer"
# The project's copy of the training messages, or the organisers' original next to the clone.
TRAINING_CSV_PLACES = (
    REPO / "crm_backend" / "dispatch" / "data" / "citizen_messages_train.csv",
    REPO.parent / "shared" / "data" / "citizen_messages_train.csv",
)
# How the organisers anonymised place names: a letter per city (A市), a number per district or
# county (A1区, K8县, C4市). Besides A-K the messages use L and M, and one prefecture, M6州.
PLACE_NAME = re.compile(r"[A-M]\d{0,2}[市区县]|M6州")
# "A区", "B区", "D区", "E区" are blocks of housing estates ("月湖小区E区", "城市广场B区",
# "CBD区"), not districts.
ESTATE_BLOCK = re.compile(r"[A-M]区")


@pytest.fixture(scope="module")
def gazetteer() -> Gazetteer:
    return Gazetteer.load(GAZETTEER_DIR)


@pytest.fixture(scope="module")
def extractor(gazetteer: Gazetteer) -> LocationExtractor:
    locator = LocationExtractor(gazetteer)
    locator.warm_up()
    return locator


@pytest.fixture(scope="module")
def training_messages() -> list[str]:
    for path in TRAINING_CSV_PLACES:
        if path.exists():
            with path.open(encoding="utf-8", newline="") as handle:
                return [row["text"] for row in csv.DictReader(handle)]
    pytest.skip("the training messages are not there (citizen_messages_train.csv)")


def write_gazetteer(directory: Path, districts: str, streets: str = "street,district,aliases\n") -> Path:
    (directory / "districts.csv").write_text(districts, encoding="utf-8")
    (directory / "streets.csv").write_text(streets, encoding="utf-8")
    return directory


SMALL_DISTRICTS = "district,parent,kind,aliases\nA市,西地省,city,\nA1区,A市,district,A1 区\nA2区,A市,district,\n"


# --- real messages ------------------------------------------------------------------------
# Taken verbatim from citizen_messages_train.csv (the id is the message's 0-based index);
# the expected district is the one a person reading the message would dispatch to.

REAL_MESSAGES = [
    pytest.param(
        "K8县",
        "K8县丁字街的商户乱摆摊 K8县丁字街的商户乱摆摊，前段时间丁字街的交通好了几天，最近那些在丁字街做生意"
        "的商户又开始把商品摆到路中间来卖了，严重影响了这条街的交通，连摩托车都不能正常的通过，城管局的领导就"
        "不能制定一个措施来制止这种形为吗？",
        id="message-1",
    ),
    pytest.param(
        "J2区",
        "J2区石榴湾游园河边护栏锈蚀损毁，有安全隐患 J2区石榴湾游园河边护栏腐烂损毁严重，小朋友在河边玩耍存在"
        "重大安全隐患，请尽快解决。",
        id="message-448",
    ),
    pytest.param(
        "D4区",
        "D4区呆鹰岭街菜市场这一片区还未通自来水邓市长你好！呆鹰岭镇呆鹰岭街菜市场这一片区自来水施工两年了还没"
        "搞好，现在又停工了，没有自来水生活都不便，肯请政府加快建设。",
        id="message-1866",
    ),
    pytest.param(
        "F4县",
        "医疗器械是每个乡村都会发放的吗？尊敬的厅长：现在国家的政策很好，村卫生室有器械发放，但为什么有的村有"
        "，有的村就没发？F4县相思乡就有好多村没发器械的，这是什么原因？",
        id="message-1431",
    ),
    pytest.param(
        "A7县",
        "建议将天然气引入A7县开慧集镇天然气价格实惠，环保，比较安全，随着开慧镇经济社会的发展，建议将天然气引"
        "入开慧集镇",
        id="message-1873",
    ),
    pytest.param(
        "C4市",
        "请求政府加强整顿C4市金薮乡镇区问题 尊重市政府，市常委，根据C4市小城镇建设，整治镇区乱搭棚子和户外广"
        "告开展，环境评估，我们金薮集镇居民门面乱搭棚子猖獗严重性，影响镇区面貌，请求政府加大各部门坚决取消，"
        "加大执法力度。",
        id="message-38",
    ),
    pytest.param(
        "C4市",
        "疑似传销组织进入C4市近两个月来，我婆婆早出晚归，每天接触望东集团――疑似传销组织。一回到家，家中任何人"
        "不能打压她所谓的学习，我希望各位能给我支支招，怎样才能捣毁她们的那个窝，能提供相关的举报电话吗？感谢"
        "各位！",
        id="message-1415",
    ),
    pytest.param(
        "L3县",
        "L3县在外务工人员买社保后还需要缴纳农村合作医疗么 我们在外务工人员现在有大部都买社保了，购买社保的还"
        "需要缴纳农村合作医疗么？",
        id="message-805",
    ),
    pytest.param(
        "J1区",
        "J1区石盖塘镇小溪村鸟塘组深受洗矿污水危害向书记：您好！西地省有色K10县岭乌业有限公司污染水排放无肆无"
        "忌惮，一年有无数次，环保部门查了都无效，我村主水源严重污染，请领导查啊。田地多堆积了选矿药渣，作物都"
        "快种不出了！！！",
        id="message-2250",
    ),
    pytest.param(
        "I4县",
        "I4县城停水已经长达三日I4县城停水已经常达三日，从1月30日至2月1日，滴水全无，影响居民数万户，范围波及"
        "县中心地带及较偏地区，烦请自来水公司，县政府重视居民用水难，停水频繁问题！给居民用水提供保障！",
        id="message-1439",
    ),
    pytest.param(
        "E4县",
        "E4县周官桥乡司马冲采石场百吨大王货车严重超载无人处理E4县周官桥乡司马冲采石场百吨大王货车严重超载无人"
        "处理，交通法明文规定不准超载，石场出口离治超站只有两里路，却无人管。",
        id="message-1207",
    ),
    pytest.param(
        "A7县",
        "A7县道路绿化问题得加强 局长您好，关于道路绿化问题得加强，特别是A7县的道路绿化，您得管一管了。谢谢！",
        id="message-489",
    ),
    pytest.param(
        "M14县",
        "盼望解决M14县城管执法大队自收自支人员的工资待遇问题M14县城管执法大队自收自支人员的工资待遇目前是M14"
        "县直单位里面最低的，只有1000元左右，还达不到西地省M6州州的最低工资标准，五险一金也没有。",
        id="message-2342",
    ),
    pytest.param(
        "J4县",
        "J4县笆篱乡很多家牛皮厂和鞭炮纸厂污染河流十多年了J4县笆篱乡很多家牛皮厂跟当地的用来做鞭炮的鞭炮纸厂对"
        "河流污染了十多年了，就是没有人管，不是红河水就是黑水厂",
        id="message-2068",
    ),
    pytest.param(
        "B9市",
        "B9市浦建混凝土有限公司每天工作到两三点 B9市浦建混凝土有限公司每天工作到两三点，甚至更晚，燥音很大，"
        "附近很多居民，不知道它这算不算违建，吵得很多人睡不着，希望有关部门监督管理下。",
        id="message-523",
    ),
    pytest.param(
        "A3区",
        "A3区雨敞坪镇一辅导班无证办学A3区雨敞坪镇有一辅导班，名叫欣曦教育，无证办学，教师周志国参与。请严查。",
        id="message-1838",
    ),
    pytest.param(
        "M7市",
        "M7市雅溪铁路桥边的养猪场臭气熏天局长：你好！我住M7市雅溪铁路桥边，边上有一家养猪场，一到夏天臭气熏天"
        "，窗户不敢开，环境污染太大，请问局长在居民区是否可办猪场？",
        id="message-2262",
    ),
    pytest.param(
        "G9市",
        "G9市药山镇药山村农村危房改造补贴是多少？我是津市药山镇药山村人，是三级残疾人且是独生子靠低保生活，请"
        "问我建房(危房改造)的补贴是多少？",
        id="message-2538",
    ),
    pytest.param(
        "A3区",
        "A3区含浦镇玉江村高考美术培训机构是否合法？ A3区含浦镇玉江村欧公组有一个叫同行添艺 高考美术培训机构，"
        "在没有取得合法办学资质的情况下非法办学，希望能够打击这些非法培训机构，保护到社会上守法公民的合法权益"
        "！",
        id="message-134",
    ),
    pytest.param(
        "A1区",
        "A市天健A1区盛世物业管理西北角垃圾站臭气熏天天健A1区盛世物业管理西北角垃圾站臭气熏天，致使我们省粮食"
        "局小区的住户，整日不敢开门开窗，也和天健A1区盛世物业办沟通过，可得不到解决。",
        id="message-1572",
    ),
    pytest.param(
        "J8县",
        "J8县延寿乡下杨村江边半夜洗尾沙严重污染周边环境，称是领导默许的 J8县延寿乡下杨村铜田组江边做了个窑厂"
        "一到夜里就拉尾矿来洗严重污染周边环境，那么久为什么没人管。不可能不知道吧! 以上内容是事实望领导关注",
        id="message-695",
    ),
    pytest.param(
        "B1区",
        "B1区601中英文小学校长安排校外培训机构向学生收费在学校上科博班B市B1区601中英文小学校长安排校外培训机"
        "构向学生收费在学校上科博班。家长无奈交钱，教师无奈服从。请教育局查处！",
        id="message-1312",
    ),
    pytest.param(
        "M3县",
        "M3县上班族需在哪里办理社保手续我是M市一家劳务派遣公司派遣在M3县一家单位上班的职工，请问我在哪里办理社保手续",
        id="message-1254",
    ),
    pytest.param(
        "J11市",
        "请教有关J11市公租房方面的问题新来J11市工作，发现J11市新区能供单身居住的小房子实在是少，请问现在J11市"
        "的公租房开始申请没？有多少资源？有什么条件？",
        id="message-1801",
    ),
    pytest.param(
        "C1区",
        "办理肝癌病退需多少个工作日？有规定吗？我是C市的一名肝癌患者，现在53岁了，2015年元月23日已将相关资料"
        "上报到C1区社保局，可是慢慢等的答复，再次让我欲哭无泪；本就因病致穷，现又如此。故上书致问、愿回复",
        id="message-1036",
    ),
    pytest.param(
        "D6县",
        "D6县楚税社保网功能不完善楚税社保网不可以缴纳城乡居民医疗保险，对于在外务工的老百姓不便民。",
        id="message-1825",
    ),
    pytest.param(
        "E5县",
        "E5县严塘镇寸石镇有很多没有合法检疫票的肉在市场流通尊敬的领导，E5县肉产品有很多没有合法检疫票的肉在市"
        "场流通，私屠乱宰，工商所不知怎么管，我也在当地举报过，他们说是当，地政府的事，所以不管，我想工商所有"
        "用吗，请领导到E5县严塘镇寸石镇来查看一下。",
        id="message-2080",
    ),
    pytest.param(
        "L10县",
        "L10县县房价太高了，希望控制一下L10县房价太高了一般家庭买不起。和L市差不多了？希望有关单位调查一下。",
        id="message-2100",
    ),
    pytest.param(
        "K11县",
        "举报K11县县社会福利中心附属工程不招标 举报K11县县民政局主管下属单位县社会福利中心，建筑范围内附属工"
        "程价值几佰万的工程量没有公开招标，建筑范围外的二十多亩土地，土石方工程（土方量4万多方、工程价值几十"
        "万），未批先建。",
        id="message-44",
    ),
    pytest.param(
        "D11市",
        "反映D11市2015年特岗教师社保缴费问题您好！我是D11市2015年特岗，今年7月底特岗三年合同就要到期了，可是"
        "我的社保目前只交了2017年6个月的医保和生育保险。请问我该怎么办？",
        id="message-1213",
    ),
    pytest.param(
        "M11县",
        "M11县锦绣名城各栋楼电梯年检过期很久了 锦绣名城各栋楼电梯年检过期很久，有的电梯乘坐时甚至有很大异常。"
        "存在极大的安全隐患。物业管理且迟迟没有申请有关部门对电梯进行年检。",
        id="message-649",
    ),
    pytest.param(
        "G5县",
        "使用过期药品，投诉G5县卫生局不受理 王峮书记： 您好 在G5县澹阳居委会卫生室因感冒打点滴，卫生室医师用"
        "过期药品我到G5县卫生局投诉，卫生局不受理，请问那里有负责的政府过问这事，",
        id="message-321",
    ),
    pytest.param(
        "H3县",
        "H3县苗市镇中美矽砂矿环境恶劣H3县苗市镇天星村中美矽砂矿环境恶劣，当地百姓没有一条好出路，没有一口好水"
        "，我手中有多张照片为证，不知上级领导会不会引起重视？",
        id="message-1561",
    ),
    pytest.param(
        "I1区",
        "I市I1区张家塞乡的道路规划 借问一下局长，张家塞乡未来有没有比较大型的道路规划？ 想回家投资办厂，为家"
        "乡发展贡献绵薄之力，但是交通基础设施太差。如果未来有规划，可以考虑。",
        id="message-706",
    ),
]
REAL_MESSAGES_WITH_STREET_ONLY = [
    pytest.param(
        "A6区",
        "A市月亮岛街道银星湾公园污水乱排 地处月亮岛街道银星湾公园旁的一处排水口常年又黑又臭且带有油脂的污水排"
        "放至楚江无人看管，希望有关方面尽快加大查处力度。",
        id="message-923",
    ),
    pytest.param(
        "A6区",
        "A市楚江新区滨水新城月亮岛街道何时可以规划集中供暖地处楚江新区核心板块的滨水新城月亮岛街道何时可以规"
        "划新建楚江集中供暖。",
        id="message-1260",
    ),
    pytest.param(
        "B5县",
        "渌口区渌口镇的马路到处都是坑坑洼洼渌口镇的马路到处都是坑坑洼洼，和渌口区政治经济文化中心的身份不符合。",
        id="message-1737",
    ),
    pytest.param(
        "A7县",
        "星沙灰埠到捞刀河桥南的107国道何时白改黑 去年捞刀河桥北到安沙镇上已完成107国道 白改黑，目前正在进行安"
        "沙到青山铺107国道的白改黑，请问 星沙灰埠到捞刀河桥南的107国道何时 白改黑？这一段路会不会加宽？",
        id="message-587",
    ),
    pytest.param(
        "K1区",
        "K市石山脚乡五里堆村开办硫酸厂，污染严重我是K市石山脚乡五里堆村的村民，我的家乡原本是个山清水秀的小山"
        "村。这里不知道啥时候开办了个硫酸厂，让我的家园失去了青山绿水，我们种植的水稻也被污染，河流也被污染，"
        "我们再也不能吃到家乡河里的鱼虾。白天可以看到硫酸厂冒出的浓烟，晚上还能听到轰隆隆的噪音。我们住这附近"
        "德村民苦不堪言，深受其害。我们为自己以及我们后代的健康深深担忧，硫酸厂怎么可以在村民聚集地开办呢？这"
        "合法合理么？需要在贵局备案么？贵局知晓么？贵局不应该让它停办么？",
        id="message-2087",
    ),
]


@pytest.mark.parametrize(("district", "message"), REAL_MESSAGES)
def test_real_messages_are_located_in_the_district_they_name(
    extractor: LocationExtractor, district: str, message: str
) -> None:
    result = extractor.extract(message)

    assert result.district == district
    assert result.source == "text"
    assert not result.ambiguous


@pytest.mark.parametrize(("district", "message"), REAL_MESSAGES_WITH_STREET_ONLY)
def test_real_messages_naming_only_a_known_street_are_located_by_it(
    extractor: LocationExtractor, district: str, message: str
) -> None:
    result = extractor.extract(message)

    assert result.district == district
    assert result.source == "street"
    assert result.street is not None


def test_every_place_name_in_the_training_messages_is_in_the_gazetteer(
    gazetteer: Gazetteer, training_messages: list[str]
) -> None:
    names = {match.group(0) for text in training_messages for match in PLACE_NAME.finditer(text)}
    names -= {name for name in names if ESTATE_BLOCK.fullmatch(name)}

    missing = sorted(name for name in names if name not in gazetteer.districts)

    assert len(names) > 120
    assert missing == []
    assert all(gazetteer.canonical_district(name) is None for name in ("A区", "B区", "D区", "E区"))


def test_most_training_messages_are_located(extractor: LocationExtractor, training_messages: list[str]) -> None:
    results = [extractor.extract(text) for text in training_messages]

    located = sum(1 for r in results if r.district or r.candidates)
    resolved = sum(1 for r in results if r.district)

    # Measured: 85.7 % name a district or a city, 57.9 % one district.
    assert located / len(results) > 0.83
    assert resolved / len(results) > 0.55


# --- the rules ----------------------------------------------------------------------------


def test_a_district_address_and_street_are_taken_from_the_text(extractor: LocationExtractor) -> None:
    result = extractor.extract("A市A1区人民路23号阳光小区门口的路灯坏了一个星期了")

    assert result == LocationResult(
        district="A1区",
        street="人民路",
        address="A市A1区人民路23号阳光小区",
        candidates=[],
        ambiguous=False,
        source="text",
        city="A市",
    )


def test_the_address_stops_where_the_place_description_ends(extractor: LocationExtractor) -> None:
    result = extractor.extract("我是K市K2区珍珠北路139号潇楚佳苑小区的业主，门口的路坏了")

    assert result.district == "K2区"
    assert result.street == "珍珠北路"
    assert result.address == "K市K2区珍珠北路139号潇楚佳苑小区"


def test_a_road_with_a_door_number_is_an_address_even_without_a_district(extractor: LocationExtractor) -> None:
    result = extractor.extract("我家住在人民路23号，楼下天天施工")

    assert result.address == "人民路23号"
    assert result.district is None
    assert result.candidates == []


@pytest.mark.parametrize(
    ("text", "district"),
    [
        ("J10 县永乐江镇大源饮水库的水发黄", "J10县"),  # as typed in the training messages
        ("a6区金星北路有个工地晚上施工", "A6区"),
        ("Ａ６区金星北路有个工地晚上施工", "A6区"),  # full-width
        ("幕云街道的路灯坏了", "A2区"),  # street alias (a typo of 暮云街道)
        ("江南华府的物业乱收费", "K6县"),  # 江南华府小区 without 小区
        ("火星街道办事处不作为", "A1区"),
    ],
)
def test_aliases_map_to_canonical_names(extractor: LocationExtractor, text: str, district: str) -> None:
    assert extractor.extract(text).district == district


def test_a_street_alias_gives_the_canonical_street(extractor: LocationExtractor) -> None:
    assert extractor.extract("幕云街道的路灯坏了").street == "暮云街道"


def test_a_city_alone_is_not_a_district_its_districts_are_the_candidates(
    extractor: LocationExtractor, gazetteer: Gazetteer
) -> None:
    result = extractor.extract("A市地铁运营时间需增长，早上发车太晚了")

    assert result.district is None
    assert result.ambiguous
    assert result.source == "city"
    assert result.city == "A市"
    assert result.candidates == gazetteer.city_districts("A市")
    assert result.candidates[:3] == ["A1区", "A2区", "A3区"]
    assert "A9市" in result.candidates and "B1区" not in result.candidates


def test_the_home_city_is_the_first_city_of_the_file(gazetteer: Gazetteer) -> None:
    assert gazetteer.home_city == "A市"
    assert gazetteer.city_districts() == ["A1区", "A2区", "A3区", "A4区", "A5区", "A6区", "A7县", "A8县", "A9市"]


def test_two_districts_make_it_ambiguous_with_both_as_candidates(extractor: LocationExtractor) -> None:
    result = extractor.extract("A1区和A3区交界的那座桥上路灯不亮")

    assert result.district is None
    assert result.ambiguous
    assert result.candidates == ["A1区", "A3区"]
    assert result.source == "text"


def test_two_districts_in_a_real_message_are_ambiguous(extractor: LocationExtractor) -> None:
    message = (
        "E6县是否有危房改建补助政策？E6县岩口铺石滩村杨某自己拿钱拆危房，为什么E5县危房都由政府出钱拆除危房，"
        "E6县这项目老百姓的福利那去了？"
    )

    result = extractor.extract(message)

    assert result.ambiguous
    assert result.candidates == ["E6县", "E5县"]


def test_a_street_known_in_one_of_two_districts_settles_it(extractor: LocationExtractor) -> None:
    result = extractor.extract("A3区的朋友说，A6区金星北路那个工地晚上一直施工")

    assert result.district == "A6区"
    assert not result.ambiguous


def test_a_known_street_without_a_district_implies_its_district(extractor: LocationExtractor) -> None:
    result = extractor.extract("金星北路有个工地每天晚上施工到凌晨")

    assert result.district == "A6区"
    assert result.street == "金星北路"
    assert result.source == "street"
    assert result.city == "A市"


def test_a_street_of_another_city_than_the_one_named_is_not_taken(extractor: LocationExtractor) -> None:
    result = extractor.extract("B市金星北路有个工地每天晚上施工到凌晨")  # 金星北路 is in A6区, A市

    assert result.district is None
    assert result.source == "city"
    assert result.candidates == extractor.gazetteer.city_districts("B市")


def test_a_street_in_several_districts_offers_them(tmp_path: Path) -> None:
    directory = write_gazetteer(
        tmp_path, SMALL_DISTRICTS, "street,district,aliases\n人民路,A1区,\n人民路,A2区,\n解放路,A2区,\n"
    )
    locator = LocationExtractor(Gazetteer.load(directory))

    result = locator.extract("人民路的路灯坏了")

    assert result.district is None
    assert result.ambiguous
    assert result.candidates == ["A1区", "A2区"]
    assert result.source == "street"
    assert locator.extract("人民路和解放路路口的路灯坏了").district == "A2区"


def test_the_chosen_district_wins_over_street_inference(extractor: LocationExtractor) -> None:
    result = extractor.extract("金星北路有个工地每天晚上施工", hint_district="A2区")

    assert result.district == "A2区"
    assert result.source == "hint"
    assert not result.ambiguous


def test_the_chosen_district_settles_two_mentioned_districts(extractor: LocationExtractor) -> None:
    result = extractor.extract("A1区和A3区交界的那座桥上路灯不亮", hint_district="a3区")

    assert result.district == "A3区"
    assert result.source == "hint"
    assert result.candidates == []


def test_a_district_named_in_the_text_wins_over_the_chosen_one(extractor: LocationExtractor) -> None:
    assert extractor.extract("A5区香樟路的路灯坏了", hint_district="A2区").district == "A5区"


@pytest.mark.parametrize("hint", ["A市", "Z9区", "", None])
def test_a_chosen_city_or_unknown_name_is_no_hint(extractor: LocationExtractor, hint: str | None) -> None:
    result = extractor.extract("路灯坏了", hint_district=hint)

    assert result.district is None
    assert result.source == "none"


def test_a_rasa_district_the_gazetteer_knows_counts_like_a_mention(extractor: LocationExtractor) -> None:
    entities = [{"entity": "district", "value": "A5区", "start": 0, "end": 3}]

    result = extractor.extract("A5区小区门口的路灯坏了", rasa_entities=entities)
    from_rasa_only = extractor.extract("小区门口的路灯坏了", rasa_entities=entities)

    assert result.district == "A5区" and result.source == "text"
    assert from_rasa_only.district == "A5区" and from_rasa_only.source == "rasa"


def test_a_rasa_district_conflicting_with_the_text_makes_it_ambiguous(extractor: LocationExtractor) -> None:
    entities = [{"entity": "district", "value": "A2区"}]

    result = extractor.extract("A5区小区门口的路灯坏了", rasa_entities=entities)

    assert result.ambiguous
    assert result.candidates == ["A5区", "A2区"]


def test_rasa_entities_outside_the_gazetteer_are_ignored(extractor: LocationExtractor) -> None:
    entities = [{"entity": "district", "value": "芙蓉区"}, {"entity": "phone", "value": "13812345678"}]

    assert extractor.extract("路灯坏了", rasa_entities=entities).district is None


def test_a_rasa_address_gives_the_address_and_its_street_the_district(extractor: LocationExtractor) -> None:
    text = "在金星北路明发国际工地门口"
    entities = [{"entity": "address", "value": "金星北路", "start": 1, "end": 5}]

    result = extractor.extract("工地晚上施工太吵了", rasa_entities=entities)
    in_text = extractor.extract(text, rasa_entities=entities)

    assert result.district == "A6区"
    assert result.source == "street"
    assert result.address == "金星北路"
    assert in_text.address == "金星北路"


def test_a_rasa_address_the_gazetteer_does_not_know_is_still_the_address(extractor: LocationExtractor) -> None:
    text = "阳光花园门口那个井盖不见了"
    entities = [{"entity": "address", "value": "阳光花园", "start": 0, "end": 4}]

    result = extractor.extract(text, rasa_entities=entities)

    assert result.address == "阳光花园"
    assert result.district is None


@pytest.mark.parametrize(
    "entities",
    [
        [{"entity": "district"}],
        [{"entity": "address", "value": None, "start": "x"}],
        [{"entity": "address", "value": "人民路", "start": 99, "end": 120}],
        ["A1区", None, 3],
        [],
    ],
)
def test_malformed_rasa_entities_do_not_crash(extractor: LocationExtractor, entities: list) -> None:
    assert isinstance(extractor.extract("路灯坏了", rasa_entities=entities), LocationResult)


@pytest.mark.parametrize(
    "text",
    ["我的工单到哪了", "你好", "转人工", "请问公积金怎么提取？", "12345"],
)
def test_no_location_gives_no_district_and_no_candidates(extractor: LocationExtractor, text: str) -> None:
    result = extractor.extract(text)

    assert result == LocationResult()
    assert result.district is None and result.candidates == [] and not result.ambiguous


# --- bad input and speed ------------------------------------------------------------------


@pytest.mark.parametrize(
    "text",
    [
        "",
        "   \n\t ",
        "😀😀😀",
        "<script>alert('A1区')</script>",
        "\x00\x01\x02 A1区 \x7f",
        "\ud83d坏了",  # half an emoji (a lone surrogate)
        "A" * 500,
        "区区区县县县市市市路路路村村村",
        "号号号123号栋单元",
        "\u3000" * 50,
    ],
)
def test_junk_input_does_not_crash(extractor: LocationExtractor, text: str) -> None:
    assert isinstance(extractor.extract(text), LocationResult)


def test_non_text_input_is_treated_as_empty(extractor: LocationExtractor) -> None:
    assert extractor.extract(None) == LocationResult()  # type: ignore[arg-type]


def test_a_20000_character_message_is_handled_quickly(extractor: LocationExtractor) -> None:
    text = "A1区人民路23号" + "路灯坏了，晚上走路很危险。" * 1540

    started = time.perf_counter()
    result = extractor.extract(text)
    elapsed = time.perf_counter() - started

    assert len(text) > 20_000 > MAX_TEXT_CHARS
    assert result.district == "A1区"
    assert elapsed < 0.5  # measured: about 5 ms


def test_a_typical_message_takes_well_under_5_ms_after_warm_up(extractor: LocationExtractor) -> None:
    message = REAL_MESSAGES[0].values[1]
    timings = []
    for _ in range(50):
        started = time.perf_counter()
        extractor.extract(str(message))
        timings.append(time.perf_counter() - started)

    assert statistics.median(timings) < 0.005  # measured: about 0.3 ms


def test_nothing_is_built_until_first_use(gazetteer: Gazetteer) -> None:
    locator = LocationExtractor(gazetteer)

    assert locator._matcher is None
    locator.extract("A1区")
    assert locator._matcher is not None


def test_the_matcher_finds_names_word_for_word_in_any_case(extractor: LocationExtractor) -> None:
    found = [(m.surface, m.label, m.start, m.end) for m in extractor.matcher.find("a6区金星北路口")]

    assert found == [("a6区", "DISTRICT", 0, 3), ("金星北路", "STREET", 3, 7)]


def test_locating_a_report_never_imports_spacy() -> None:
    # spaCy, its vocabulary and the jieba dictionary its tokenizer loaded cost about 100 MB per app.
    script = (
        "import sys\n"
        "from crm_backend.dispatch.location import Gazetteer, LocationExtractor\n"
        "from crm_backend.dispatch.service import GAZETTEER_DIR\n"
        "found = LocationExtractor(Gazetteer.load(GAZETTEER_DIR)).extract('A6区金星北路23号')\n"
        "assert found.district == 'A6区' and found.street == '金星北路', found\n"
        "print(sorted(name for name in sys.modules if name.split('.')[0] in ('spacy', 'thinc')))\n"
    )
    done = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, check=True)

    assert done.stdout.strip() == "[]"


def _spacy_entity_ruler(extractor: LocationExtractor) -> Any:
    """The pipeline the locator used before `NameMatcher`: blank zh, the same jieba, an entity ruler."""
    spacy = pytest.importorskip("spacy")
    nlp = spacy.blank("zh", config={"nlp": {"tokenizer": {"segmenter": "char"}}})
    tokenizer: Any = nlp.tokenizer
    segmenter = extractor.matcher._segmenter
    tokenizer.segmenter = "jieba"
    tokenizer.jieba_seg = SimpleNamespace(cut=lambda text, cut_all=False: segmenter.cut(text, HMM=False))
    ruler: Any = nlp.add_pipe("entity_ruler", config={"phrase_matcher_attr": "LOWER", "overwrite_ents": True})
    ruler.add_patterns(extractor.gazetteer.entity_patterns())
    return nlp


def test_the_matcher_finds_what_spacys_entity_ruler_found(
    extractor: LocationExtractor, training_messages: list[str]
) -> None:
    nlp = _spacy_entity_ruler(extractor)
    names = [pattern["pattern"] for pattern in extractor.gazetteer.entity_patterns()]
    spaced = [f"{name.upper()}  {name}\t{name} 旁边{name}\n{name}" for name in names]
    texts = [_clean(text)[:MAX_TEXT_CHARS] for text in [*training_messages, *names, *spaced]]

    differ = [
        text
        for text in texts
        if text.strip()
        and [(m.start, m.end, m.label, m.surface) for m in extractor.matcher.find(text)]
        != [(e.start_char, e.end_char, e.label_, e.text) for e in nlp(text).ents]
    ]

    assert len(texts) > 4000
    assert differ == []


def test_place_names_do_not_leak_into_the_shared_jieba_dictionary(extractor: LocationExtractor) -> None:
    import jieba

    extractor.extract("A6区金星北路")

    assert "金星北路" not in jieba.lcut("A6区金星北路")


# --- the gazetteer files ------------------------------------------------------------------


def test_the_demo_gazetteer_loads(gazetteer: Gazetteer) -> None:
    kinds = {d.kind for d in gazetteer.districts.values()}

    assert kinds == {"city", "district", "county"}
    assert len(gazetteer.streets) >= 150
    assert gazetteer.districts["K8县"].parent == "K市"
    assert gazetteer.districts["A1区"].aliases == ("A1 区",)
    assert [s.district for s in gazetteer.streets_named("金星北路")] == ["A6区"]


def test_jieba_words_hold_names_aliases_and_lower_case_forms(gazetteer: Gazetteer) -> None:
    words = gazetteer.jieba_words()

    assert {"A1区", "a1区", "金星北路", "幕云街道", "江南华府"} <= set(words)
    assert not [word for word in words if re.search(r"\s", word)]
    assert len(words) == len(set(words))


@pytest.mark.parametrize(
    ("districts", "streets", "message"),
    [
        ("district,parent,aliases\nA市,西地省,\n", None, "missing kind"),
        (SMALL_DISTRICTS + "A3区,A市,district,A3,a3区\n", None, "line 5: 5 fields, expected 4"),
        (SMALL_DISTRICTS + "A3区,A市,town,\n", None, "kind must be one of"),
        (SMALL_DISTRICTS + "B1区,B市,district,\n", None, "parent 'B市' is not a city"),
        (SMALL_DISTRICTS + "A1区,A市,district,\n", None, "listed twice"),
        (SMALL_DISTRICTS + "A3区,A市,district,A1 区\n", None, "names both 'A1区' and 'A3区'"),
        (SMALL_DISTRICTS + ",A市,district,\n", None, "line 5: empty district"),
        (SMALL_DISTRICTS, "street,district,aliases\n人民路,A9区,\n", "'A9区' is not a district"),
        (SMALL_DISTRICTS, "street,district,aliases\n人民路,A市,\n", "'A市' is not a district"),
        (SMALL_DISTRICTS, "street,district,aliases\n人民路,A1区,\n人民路,A1区,\n", "listed twice in 'A1区'"),
        (SMALL_DISTRICTS, "street,district,aliases\n人民路,A1区,A2区\n", "already a district name"),
        (SMALL_DISTRICTS, "street,aliases\n人民路,\n", "missing district"),
    ],
)
def test_a_malformed_gazetteer_is_rejected_with_a_clear_error(
    tmp_path: Path, districts: str, streets: str | None, message: str
) -> None:
    write_gazetteer(tmp_path, districts, streets or "street,district,aliases\n")

    with pytest.raises(GazetteerError, match=re.escape(message)):
        Gazetteer.load(tmp_path)


def test_a_missing_or_binary_file_is_rejected(tmp_path: Path) -> None:
    with pytest.raises(GazetteerError, match=re.escape("districts.csv: cannot read")):
        Gazetteer.load(tmp_path)
    write_gazetteer(tmp_path, SMALL_DISTRICTS)
    (tmp_path / "streets.csv").write_bytes(b"street,district,aliases\n\xff\xfe\x00bad\n")
    with pytest.raises(GazetteerError, match=re.escape("streets.csv: not a UTF-8 CSV file")):
        Gazetteer.load(tmp_path)


def test_spreadsheet_exports_with_a_bom_and_blank_lines_load(tmp_path: Path) -> None:
    write_gazetteer(
        tmp_path, "\ufeff" + SMALL_DISTRICTS + "\n,,,\n", "street,district,aliases\n人民路 , A1区 , 人民大道|人名路\n"
    )

    gazetteer = Gazetteer.load(tmp_path)

    assert list(gazetteer.districts) == ["A市", "A1区", "A2区"]
    assert gazetteer.streets[0].aliases == ("人民大道", "人名路")
    assert LocationExtractor(gazetteer).extract("人名路口的红绿灯坏了").district == "A1区"


def test_an_unknown_home_city_is_rejected(tmp_path: Path) -> None:
    write_gazetteer(tmp_path, SMALL_DISTRICTS)

    with pytest.raises(GazetteerError, match="home city 'B市'"):
        Gazetteer.load(tmp_path, home_city="B市")


def test_the_data_files_are_tidy() -> None:
    for name in ("districts.csv", "streets.csv"):
        lines = (GAZETTEER_DIR / name).read_text(encoding="utf-8").splitlines()
        assert len(lines) == len(set(lines)), f"{name} has duplicate lines"
        assert all(line == line.strip() for line in lines)


def test_the_matcher_keeps_nothing_of_the_messages_it_reads(extractor: LocationExtractor) -> None:
    matcher = extractor.matcher
    names = dict(matcher._labels)

    extractor.extract("订单" + " ".join(str(n) for n in range(100, 150)))
    result = extractor.extract("A6区金星北路")

    assert extractor.matcher is matcher and matcher._labels == names
    assert result.district == "A6区" and result.street == "金星北路"
