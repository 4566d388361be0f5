"""The cloud's device import reads what street offices save: UTF-8, UTF-8 with BOM, GBK / GB18030."""

from __future__ import annotations

import pytest

from cloud.errors import BadRequestError
from cloud.registry import csv_text, parse_csv

CSV = (
    "device_id,kind,name,address,street\n"
    "70b3d57ed0000001,manhole,井盖 1 号,海淀区中关村大街 27 号,中关村街道\n"
)


@pytest.mark.parametrize(
    "data",
    [CSV.encode("utf-8"), b"\xef\xbb\xbf" + CSV.encode("utf-8"), CSV.encode("gbk"), CSV.encode("gb18030")],
    ids=["utf-8", "utf-8-bom", "gbk", "gb18030"],
)
def test_import_accepts_excel_encodings(data: bytes) -> None:
    (dev,) = parse_csv(csv_text(data))
    assert dev.address == "海淀区中关村大街 27 号" and dev.name == "井盖 1 号"


def test_undecodable_bytes_say_how_to_save_the_file() -> None:
    with pytest.raises(BadRequestError, match="CSV UTF-8"):
        csv_text(b"device_id,kind\n\xff\xfe\xff,manhole\n")
