"""Sign-in as a layer of its own: a check asks a credential source for what to send (a password, or an OAuth2
access token), and token sources cache per identity, refresh ahead of expiry, one request at a time.

credential.py: the Credential type, the source protocol and the password source. settings.py: the `auth.oauth2`
config block. endpoint.py: one HTTP request to a token endpoint. grants.py: client_credentials, refresh_token,
service_account, token_file, token_command. tokens.py: the per-identity cache and registry. sasl.py: XOAUTH2 and
OAUTHBEARER. device.py: the device-code sign-in behind `mailmon auth login`.
"""

from monitor.signin.credential import Credential, CredentialSource, PasswordSource
from monitor.signin.tokens import IDENTITIES, TokenEvent, source_for

__all__ = ["IDENTITIES", "Credential", "CredentialSource", "PasswordSource", "TokenEvent", "source_for"]
