//! reverse-udp-tunnel: reach a UDP service behind carrier-grade NAT through a public relay.
