//! Batches on loopback sockets: order, boundaries, GSO trains and GRO, in every offload mode this kernel has.

use super::*;
use std::time::Instant;

fn socket() -> UdpSocket {
    let s = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    net::grow_receive_buffer(&s);
    s
}

/// Both the facilities this kernel offers and the plain path.
fn modes() -> [Offload; 2] {
    [offload(), Offload::PLAIN]
}

/// Receive with a batch until `n` datagrams came (each receive waits at most 5 s).
fn take(b: &mut Batch, s: &UdpSocket, n: usize) -> Vec<(SocketAddr, Vec<u8>)> {
    let mut got = Vec::new();
    let mut scratch = Vec::new();
    while got.len() < n {
        b.recv(s).expect("datagram within 5 s");
        let (rx, _tx) = b.split(s);
        for d in rx.datagrams() {
            got.push((d.src, rx.parts(&d).contiguous(&mut scratch).to_vec()));
        }
    }
    got
}

fn payload(i: usize, len: usize) -> Vec<u8> {
    (0..len).map(|k| (i * 31 + k * 7) as u8).collect()
}

const SIZES: [usize; 9] = [0, 1, 64, 191, 192, 193, 1400, 9000, 65507];

#[test]
fn offload_is_found_without_failing() {
    // Whatever this kernel offers; what matters is that finding out neither fails nor hangs.
    println!("{}", offload());
}

#[test]
fn receive_keeps_order_and_boundaries() {
    for mode in modes() {
        let (a, b) = (socket(), socket());
        let to = b.local_addr().unwrap();
        let sent: Vec<Vec<u8>> = (0..300)
            .map(|i| payload(i, SIZES[i % SIZES.len()]))
            .collect();
        for p in &sent {
            a.send_to(p, to).unwrap();
        }
        let mut batch = Batch::with_offload(&b, Shape::TUNNEL, mode).unwrap();
        let got = take(&mut batch, &b, sent.len());
        assert_eq!(got.len(), sent.len(), "{mode}");
        for (i, (src, data)) in got.iter().enumerate() {
            assert_eq!(*src, a.local_addr().unwrap());
            assert_eq!(data, &sent[i], "datagram {i} ({mode})");
        }
    }
}

#[test]
fn a_lone_datagram_is_not_held_back() {
    for mode in modes() {
        let (a, b) = (socket(), socket());
        let mut batch = Batch::with_offload(&b, Shape::RELAY, mode).unwrap();
        let to = b.local_addr().unwrap();
        let sender = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(20));
            a.send_to(b"alone", to).unwrap();
        });
        let t = Instant::now();
        let got = take(&mut batch, &b, 1);
        // The socket timeout is 5 s: a receive that waited for more would take that long.
        assert!(t.elapsed() < Duration::from_secs(2), "{mode}");
        assert_eq!(got[0].1, b"alone");
        sender.join().unwrap();
    }
}

/// Two destinations interleaved, runs of equal sizes (GSO trains where offered), odd sizes between.
#[test]
fn sends_keep_order_and_boundaries_per_destination() {
    for mode in modes() {
        let a = socket();
        let (b, c) = (socket(), socket());
        let (tb, tc) = (b.local_addr().unwrap(), c.local_addr().unwrap());
        let mut plan: Vec<(SocketAddr, Vec<u8>)> = Vec::new();
        for i in 0..200 {
            let len = match i % 50 {
                0..20 => 1400,
                20 => 700,
                21..30 => 64,
                30 => 0,
                _ => SIZES[i % SIZES.len()],
            };
            let to = if i % 7 == 3 { tc } else { tb };
            plan.push((to, payload(i, len)));
        }
        let mut batch = Batch::with_offload(&a, Shape::RELAY, mode).unwrap();
        let (_, mut tx) = batch.split(&a);
        for (to, p) in &plan {
            tx.push(*to, Parts(p, &[]));
        }
        assert_eq!(tx.finish(), 0, "{mode}");
        for (sock, to) in [(&b, tb), (&c, tc)] {
            let want: Vec<&Vec<u8>> = plan.iter().filter(|p| p.0 == to).map(|p| &p.1).collect();
            let mut buf = vec![0; 70000];
            for (i, w) in want.iter().enumerate() {
                let n = sock.recv(&mut buf).expect("sent datagram arrives");
                assert_eq!(&buf[..n], &w[..], "datagram {i} to {to} ({mode})");
            }
        }
    }
}

/// Trains sent with GSO, received with GRO where offered: cut back into the same datagrams; split ones
/// (dense + overflow) forwarded without a copy arrive whole.
#[test]
fn trains_survive_a_batch_to_batch_hop() {
    for mode in modes() {
        let (a, b, c) = (socket(), socket(), socket());
        let sent: Vec<Vec<u8>> = (0..120)
            .map(|i| payload(i, if i % 40 == 39 { 300 } else { 1400 }))
            .collect();
        let mut ab = Batch::with_offload(&a, Shape::RELAY, mode).unwrap();
        let (_, mut tx) = ab.split(&a);
        for p in &sent {
            tx.push(b.local_addr().unwrap(), Parts(p, &[]));
        }
        assert_eq!(tx.finish(), 0);
        // b forwards everything to c, as a tunnel does.
        let mut bb = Batch::with_offload(&b, Shape::TUNNEL, mode).unwrap();
        let mut forwarded = 0;
        while forwarded < sent.len() {
            bb.recv(&b).expect("datagram within 5 s");
            let (rx, mut tx) = bb.split(&b);
            for d in rx.datagrams() {
                tx.push(c.local_addr().unwrap(), rx.parts(&d));
                forwarded += 1;
            }
            assert_eq!(tx.finish(), 0);
        }
        let mut cb = Batch::with_offload(&c, Shape::TUNNEL, mode).unwrap();
        let got = take(&mut cb, &c, sent.len());
        let got: Vec<Vec<u8>> = got.into_iter().map(|g| g.1).collect();
        assert_eq!(got, sent, "{mode}");
    }
}

/// A datagram the kernel refuses (here: an IPv6 destination on an IPv4 socket, sent nowhere) is counted
/// and skipped; the ones after it still go, in order (sendmmsg stops at the refused one: a partial send).
#[test]
fn a_refused_datagram_does_not_take_the_others() {
    for mode in modes() {
        let (a, b) = (socket(), socket());
        let to = b.local_addr().unwrap();
        let bad: SocketAddr = "[::1]:9".parse().unwrap();
        let msgs: Vec<Vec<u8>> = (0..12).map(|i| payload(i, 100)).collect();
        let mut batch = Batch::with_offload(&a, Shape::RELAY, mode).unwrap();
        let (_, mut tx) = batch.split(&a);
        for (i, m) in msgs.iter().enumerate() {
            let dst = if i == 4 || i == 5 || i == 9 { bad } else { to };
            tx.push(dst, Parts(m, &[]));
        }
        assert_eq!(tx.finish(), 3, "{mode}");
        let mut buf = [0u8; 200];
        for (i, m) in msgs.iter().enumerate() {
            if i == 4 || i == 5 || i == 9 {
                continue;
            }
            let n = b.recv(&mut buf).unwrap();
            assert_eq!(&buf[..n], &m[..], "{mode}");
        }
    }
}

/// Big datagrams touch the overflow; after enough small ones its pages are given back, and it still works.
#[test]
fn overflow_pages_are_given_back_after_small_traffic() {
    let (a, b) = (socket(), socket());
    let to = b.local_addr().unwrap();
    let mut batch = Batch::new(&b, Shape::TUNNEL).unwrap();
    a.send_to(&payload(1, 9000), to).unwrap();
    assert_eq!(take(&mut batch, &b, 1)[0].1, payload(1, 9000));
    assert!(batch.overflow_dirty);
    for i in 0..QUIET_BEFORE_RELEASE as usize {
        a.send_to(&payload(i, 10), to).unwrap();
        take(&mut batch, &b, 1);
    }
    assert!(!batch.overflow_dirty);
    a.send_to(&payload(2, 20000), to).unwrap();
    assert_eq!(take(&mut batch, &b, 1)[0].1, payload(2, 20000));
}

/// A thousand tunnels: each tunnel's block of headers and dense area stays well under the page it took as a
/// mapping of its own (blocks are packed on the heap), which is what a thousand tunnels' memory is made of.
#[test]
fn a_tunnel_block_is_well_under_a_page() {
    let len = Layout::of(Shape::TUNNEL).len;
    assert!(len <= 3500, "{len} bytes");
}

#[test]
fn more_than_a_batch_of_sends_flushes_early_and_keeps_order() {
    let (a, b) = (socket(), socket());
    let to = b.local_addr().unwrap();
    let msgs: Vec<Vec<u8>> = (0..100).map(|i| payload(i, 10 + i)).collect();
    let mut batch = Batch::new(&a, Shape::TUNNEL).unwrap();
    let (_, mut tx) = batch.split(&a);
    for m in &msgs {
        tx.push(to, Parts(m, &[]));
    }
    tx.push_owned(to, b"owned".to_vec());
    assert_eq!(tx.finish(), 0);
    let mut buf = [0u8; 200];
    for m in msgs.iter().map(|m| &m[..]).chain([&b"owned"[..]]) {
        let n = b.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], m);
    }
}
