"""Which Discord links are signed, and when they end."""

from __future__ import annotations

from cogs._cdn import expires_at


def test_signed_links_expire_at_their_ex_parameter():
    url = (
        "https://cdn.discordapp.com/attachments/1/2/cat.png"
        "?ex=6b0c72f6&is=6b0b2176&hm=5c49ece82ee3d2161dd2ecc79de1195427"
    )
    assert expires_at(url) == 0x6B0C72F6


def test_unsigned_or_foreign_links_have_no_expiry():
    assert expires_at("https://cdn.discordapp.com/attachments/1/2/cat.png") is None
    assert expires_at("https://pub-1.r2.dev/out.png?ex=zz&hm=1") is None
    assert expires_at("https://pub-1.r2.dev/out.png?ex=6b0c72f6") is None
