//! edgemesh patch: ambiguous HTTP/1 request framing that hyper settled instead of refusing.

/// Set on a request whose framing hyper settled rather than refused, with what it was.
///
/// RFC 9112 §6.3 lets a server read such a message one way: `Content-Length` together with
/// `Transfer-Encoding: chunked` (the length is dropped and the connection closes after the
/// response), or `Content-Length` repeated with one value (one is kept). hyper does so, and
/// the request no longer shows it. A proxy should refuse it instead (§6.3 item 3: a message
/// framed otherwise by another hop is the stuff of request smuggling): the extension tells
/// the service, which can answer 400.
///
/// ```no_run
/// # fn f(req: http::Request<()>) {
/// if let Some(why) = req.extensions().get::<hyper::ext::AmbiguousFraming>() {
///     eprintln!("refused: {}", why.reason());
/// }
/// # }
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AmbiguousFraming(pub(crate) &'static str);

impl AmbiguousFraming {
    /// What was ambiguous: "both Transfer-Encoding and Content-Length" or "more than one
    /// Content-Length".
    pub fn reason(&self) -> &'static str {
        self.0
    }
}
