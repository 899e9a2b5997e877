"""Independent oracles for tests and demos: fake upstream, fake Alipay, usage seeding.
Imports nothing of the code it fakes."""
