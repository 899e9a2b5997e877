"""Plans sold for money: orders, Alipay calls and signatures.
Must not import api, relay or web."""
