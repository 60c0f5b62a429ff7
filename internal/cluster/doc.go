// Package cluster holds a dvm cluster's credentials and its gossip membership.
//
// # Trust model
//
// A cluster has its own certificate authority, made once by `dvmd cluster init` on the
// operator's machine: ca.crt, ca.key and gossip.key (32 random bytes). The CA signs only
// node certificates: one per node, naming the node (common name and DNS SAN), the IP
// addresses it is reached at and the loopback names, valid one year, for both TLS server
// and client use. Nothing else is signed; the CA cannot sign intermediate CAs.
//
// Who holds what: ca.key stays with the operator (the cluster directory), unless the
// operator lets hosts join with join tokens: then the management nodes hold it too, in
// their credentials directory, and sign a joining host's certificate request (Issuer).
// Each node holds ca.crt, gossip.key and its own node-NAME.crt and node-NAME.key, made by
// `dvmd cluster issue` and copied to it, or by `dvmd join` (the key made on the host,
// never sent). Key files are 0600 and Load refuses them when others can read them.
//
// How a node joins: it loads its credentials, gossips with memberlist encrypted under the
// gossip key (AES-256-GCM on every UDP packet and TCP stream), and talks raft, the API
// agent traffic over mutual TLS 1.3 where both sides present a certificate from the
// cluster's CA. The operators' API speaks TLS with the node's certificate (or an
// operator's), and peers that call it check the node's against the CA. A peer's node name is taken from its verified certificate (PeerName),
// never from what it says; messages sent with Members.Send are signed with the sender's
// node key, so the receiver knows which node sent them even though all nodes share the
// gossip key.
//
// What an attacker without these files can do: see that gossip and TLS traffic flows
// and how much, and drop, delay or replay packets — a network attacker can always make a
// node look failed, which the role machine's leases make safe. It cannot read or forge
// gossip (packets without the key are dropped, so it cannot join or inject members or
// metadata), cannot connect to raft or the API (the TLS handshake fails without a
// certificate from the CA), and cannot pose as a node to another node. A replayed Send
// message reaches only its addressee, as the same message from the same sender, so its
// receiver must tolerate duplicates (failover's messages do).
//
// A gossip member's name is bound to its certificate (identity.go): its metadata is
// signed with its node key, for its gossip address, and members take news of a name only
// when the certificate of that name signed it. So the gossip key, which every node (and
// every host given a join token) holds, lets no one gossip under another node's name.
//
// What a stolen node's files give: that node's identity until its certificate expires,
// and the gossip key. With them one can say that other nodes failed or are suspect (such
// news is not signed: the named node refutes it if it is alive), but cannot gossip as
// another name or publish its metadata, nor pose as another node on raft, the API or
// Send; and where the raft layer's Allow admits only the management nodes, a plain
// node's files do not reach raft at all. The remedy is a new cluster key set: there is no
// revocation list yet. A stolen ca.key gives the whole cluster.
package cluster
