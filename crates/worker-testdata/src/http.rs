//! A one-request HTTP server for the tests that wait for a worker's ready callback.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;

/// Accepts one HTTP/1.1 request on `listener`, hands its request line and body to
/// `before_answer`, then answers 200 and returns what `before_answer` returned (a test
/// can ask the worker something while the worker waits for that answer).
pub fn receive_one_request<T>(
    listener: TcpListener,
    before_answer: impl FnOnce(&str, &[u8]) -> T,
) -> T {
    let (stream, _) = listener.accept().expect("a connection");
    let mut reader = BufReader::new(stream.try_clone().expect("the connection"));
    let mut request_line = String::new();
    reader.read_line(&mut request_line).expect("a request line");
    let mut length = 0;
    loop {
        let mut line = String::new();
        reader.read_line(&mut line).expect("a header");
        let line = line.trim_end();
        if line.is_empty() {
            break;
        }
        if let Some((k, v)) = line.split_once(':') {
            if k.eq_ignore_ascii_case("content-length") {
                length = v.trim().parse().expect("a content length");
            }
        }
    }
    let mut body = vec![0; length];
    reader.read_exact(&mut body).expect("the body");
    let result = before_answer(request_line.trim_end(), &body);
    let mut stream = stream;
    stream
        .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
        .expect("the answer");
    result
}
