"""Fake notification providers: real HTTP/SMTP servers on free ports that check signatures as the provider
does and misbehave on demand (time out, answer 500, rate-limit, expire a token). One module per provider."""
