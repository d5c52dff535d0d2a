//! WebSocket upgrades pass through the gateway.

mod common;

use common::{gateway, one_upstream};
use futures_util::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::Message;
use weir_testsupport::Upstream;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_echo_through_the_gateway() {
    let up = Upstream::start("ws").await;
    let gw = gateway(&one_upstream(&[up.target()], "")).await;
    let url = format!("ws://{}/ws", gw.proxy_addr());
    let (mut ws, resp) = tokio_tungstenite::connect_async(url)
        .await
        .expect("upgrade through weir");
    assert_eq!(resp.status(), 101);
    for i in 0..10 {
        ws.send(Message::text(format!("hello {i}"))).await.unwrap();
        let m = ws.next().await.unwrap().unwrap();
        assert_eq!(m.into_text().unwrap().as_str(), format!("hello {i}"));
    }
    let blob: Vec<u8> = (0..200_000u32).map(|i| i as u8).collect();
    ws.send(Message::binary(blob.clone())).await.unwrap();
    let m = ws.next().await.unwrap().unwrap();
    assert_eq!(m.into_data().as_ref(), &blob[..]);
    ws.close(None).await.unwrap();
}
