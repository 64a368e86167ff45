//! Real protocols on loopback for the transfer tests: a server speaking the Hugging Face
//! Hub's URL paths (with fault injection), and an S3 server (s3s-fs) on a temp folder.

pub mod fake_hub;

use std::net::SocketAddr;
use std::path::Path;

use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto::Builder as ConnBuilder;
use s3s::auth::SimpleAuth;
use s3s::service::S3ServiceBuilder;

pub const S3_KEY: &str = "gradline-test-key";
pub const S3_SECRET: &str = "gradline-test-secret";

/// An S3-compatible server on a folder (buckets are its subfolders), until the runtime ends.
pub async fn start_s3(root: &Path) -> SocketAddr {
    std::fs::create_dir_all(root).unwrap();
    let fs = s3s_fs::FileSystem::new(root).unwrap();
    let mut builder = S3ServiceBuilder::new(fs);
    builder.set_auth(SimpleAuth::from_single(S3_KEY, S3_SECRET));
    let service = builder.build();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let http = ConnBuilder::new(TokioExecutor::new());
        loop {
            let Ok((socket, _)) = listener.accept().await else {
                continue;
            };
            let connection = http
                .serve_connection(TokioIo::new(socket), service.clone())
                .into_owned();
            tokio::spawn(async move {
                let _ = connection.await;
            });
        }
    });
    address
}

/// Serves an axum router on a loopback port, until the runtime ends.
pub async fn start(router: axum::Router) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let _ = axum::serve(listener, router).await;
    });
    address
}
