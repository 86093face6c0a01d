"""The urllib side of the egress policy (`EgressPolicy.opener`): handlers whose HTTP(S)
connections connect only to checked addresses and whose redirects are checked. Apart from
storage.egress so that a job that fetches nothing over HTTP does not import http.client."""

from __future__ import annotations

import functools
import http.client
import ssl
import urllib.request
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from storage.egress import EgressPolicy


def build_opener(
    policy: EgressPolicy,
    what: str,
    handlers: Sequence[urllib.request.BaseHandler],
    context: ssl.SSLContext | None,
    redirects: bool,
) -> urllib.request.OpenerDirector:
    """`EgressPolicy.opener` (its docs)."""
    for handler in handlers:
        if isinstance(
            handler,
            urllib.request.HTTPHandler
            | urllib.request.HTTPSHandler
            | urllib.request.HTTPRedirectHandler
            | urllib.request.ProxyHandler
            | urllib.request.FTPHandler
            | urllib.request.FileHandler,
        ):
            raise ValueError(
                f"EgressPolicy.opener: {type(handler).__name__} would bypass the policy "
                "(pass context= or redirects= instead)"
            )
    if not policy.restricted:
        own: list[urllib.request.BaseHandler] = [urllib.request.HTTPSHandler(context=context)]
        if not redirects:
            own.append(_NoRedirects())
        return urllib.request.build_opener(*own, *handlers)
    director = urllib.request.OpenerDirector()
    for handler in (
        urllib.request.ProxyHandler({}),
        urllib.request.UnknownHandler(),
        urllib.request.HTTPDefaultErrorHandler(),
        _CheckedRedirects(policy, what) if redirects else _NoRedirects(),
        urllib.request.HTTPErrorProcessor(),
        _GuardedHTTPHandler(policy, what),
        _GuardedHTTPSHandler(policy, what, context),
        *handlers,
    ):
        director.add_handler(handler)
    return director


class _NoRedirects(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None  # urllib then raises HTTPError with the 3xx status


class _CheckedRedirects(urllib.request.HTTPRedirectHandler):
    """Follows a redirect only to an http(s) URL whose host passes the policy."""

    def __init__(self, policy: EgressPolicy, what: str):
        self.policy = policy
        self.what = what

    def redirect_request(
        self,
        req: urllib.request.Request,
        fp: Any,
        code: int,
        msg: str,
        headers: Any,
        newurl: str,
    ) -> urllib.request.Request | None:
        try:
            self.policy.check_redirect(newurl, self.what)
        except BaseException:
            fp.close()
            raise
        return super().redirect_request(req, fp, code, msg, headers, newurl)


def _guarded(connection: type[http.client.HTTPConnection]) -> Any:
    """A connection class whose sockets come from `policy.create_connection`: http.client
    calls `self._create_connection` for the TCP connect and wraps TLS afterwards with the host
    name, so SNI and the certificate check stay on the name."""

    def build(host: str, *, policy: EgressPolicy, what: str, **kwargs: Any) -> Any:
        conn = connection(host, **kwargs)
        conn._create_connection = functools.partial(  # type: ignore[attr-defined]
            policy.create_connection, what=what
        )
        return conn

    return build


class _GuardedHTTPHandler(urllib.request.HTTPHandler):
    def __init__(self, policy: EgressPolicy, what: str):
        super().__init__()
        self._factory = functools.partial(
            _guarded(http.client.HTTPConnection), policy=policy, what=what
        )

    def http_open(self, req: urllib.request.Request) -> http.client.HTTPResponse:
        return self.do_open(self._factory, req)


class _GuardedHTTPSHandler(urllib.request.HTTPSHandler):
    def __init__(self, policy: EgressPolicy, what: str, context: ssl.SSLContext | None):
        super().__init__(context=context)
        self._factory = functools.partial(
            _guarded(http.client.HTTPSConnection), policy=policy, what=what
        )
        self._tls = context

    def https_open(self, req: urllib.request.Request) -> http.client.HTTPResponse:
        return self.do_open(self._factory, req, context=self._tls)
