package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/stt-tun/stt-tun/internal/status"
)

// sampleMeshStatus is a node of a mesh: a [[peer]], members learned through a
// bootstrap address, by gossip and by their handshake, one whose claim was refused and
// one whose name was.
func sampleMeshStatus() status.Status {
	now := sampleNow()
	return status.Status{
		State:      status.StateUp,
		Interface:  "stt4",
		NodeName:   "zeta",
		PublicKey:  "mK8fT2yq0b6v7dW1lYbX8m3T9QJ0e9a0aQ4cZ1vJ5Ws=",
		ListenPort: 51900,
		MTU:        1420,
		Addresses:  []string{"10.99.1.6/24", "fd3a:91c2:5e07::8c1d:2f4e:9a01:77c3/64"},
		Counters: map[string]uint64{
			"handshakes_started": 6, "handshakes_completed": 5,
			"mesh_record_accepted": 9, "mesh_record_stale": 14, "mesh_record_bad_signature": 2,
			"mesh_records_swept": 1, "mesh_claims_refused": 1, "mesh_names_refused": 1,
			"mesh_messages_in": 120, "mesh_bytes_in": 15400, "mesh_messages_out": 118, "mesh_bytes_out": 14100,
			"mesh_punch_requests_sent": 4, "mesh_punches_started": 2, "mesh_relay_requests_sent": 1, "mesh_relay_paths_installed": 1,
			"drop_revoked": 3, "mesh_statement_accepted": 1, "mesh_statement_unknown_admin": 2, "mesh_record_revoked": 1,
			"mesh_statement_stale": 6, // the echoes of a revocation's spreading: no refusal
		},
		Peers: []status.Peer{
			{
				Name: "beta", Source: "config", Endpoint: "192.0.2.2:51900", Path: "udp",
				PublicKey:       "KOD+v1du/WfPwISWjwaUDAAdJzc7qGI8S7IrRSZokWI=",
				AllowedPrefixes: []string{"10.99.1.2/32"},
				LastHandshake:   now.Add(-40 * time.Second), RTT: 0.84,
				TxBytes: 2048, RxBytes: 4096, TxPackets: 2, RxPackets: 4,
				MeshAddress: "fd3a:91c2:5e07::41a0:9e3b:c2d8:1f05",
				Candidates:  []string{"192.0.2.2:51900"},
				Seed:        "8b01d2e4",
			},
			{
				Name: "eta", Source: "bootstrap", Endpoint: "198.51.100.7:51900", Path: "udp",
				PublicKey:       "3q2+7wA6c1Hc0m1yC4x8gU1YpPq8Wb5Rt0xk6Jd2bEo=",
				AllowedPrefixes: []string{"10.99.1.7/32"},
				LastHandshake:   now.Add(-3 * time.Second), RTT: 12.5,
				TxBytes: 300, RxBytes: 280, TxPackets: 3, RxPackets: 3,
				MeshAddress: "fd3a:91c2:5e07::7d02:11aa:5b3c:e090",
				Candidates:  []string{"198.51.100.7:51900", "10.0.0.7:51900"},
				Seed:        "8b01d2e4",
			},
			{
				Name: "theta", Source: "gossip", Path: "none",
				PublicKey:       "p0Y8jv6Q2c3L1m7tXr9WbqZ4e5F0aK2sH8dN1uV3yGc=",
				AllowedPrefixes: []string{"10.99.1.20/32"},
				MeshAddress:     "fd3a:91c2:5e07::e6f1:3c44:0b9d:2a71",
				Candidates:      []string{"203.0.113.20:40112", "192.168.1.20:51900"},
				Refusals:        []string{"10.0.0.0/8: not inside accept_prefixes"},
			},
			{
				Name: "iota", Source: "handshake", Endpoint: "203.0.113.9:60211", Path: "udp",
				PublicKey:     "Zt4b0Jw3mQe8Yx1v6Lk2R9pA7sD5fG3hJ1kL0zX8cVw=",
				LastHandshake: now.Add(-1 * time.Second),
				TxBytes:       0, RxBytes: 0,
				MeshAddress: "fd3a:91c2:5e07::9b51:c0de:4471:08f3",
				Seed:        "3f2a91c0",
			},
			{
				Name: "lambda", Source: "gossip", Path: "relay", RelayVia: "eta",
				PublicKey:     "c2Yr0Wd1S3n6O9d4M7u5A8z2X1f3L0k6I4h9G7t5B3p=",
				LastHandshake: now.Add(-20 * time.Second), RTT: 31.2,
				TxBytes: 20480, RxBytes: 10240, TxPackets: 20, RxPackets: 10,
				PathMTU: 1368, PathMTUDatagram: 1408, PathMTUState: "probing",
				MeshAddress: "fd3a:91c2:5e07::5e2a:71b0:d3c4:9f18",
				Candidates:  []string{"198.18.7.2:43122", "10.7.0.2:51900"},
				PathReason:  "punch failed, relayed",
			},
			{
				Name: "mu", Source: "gossip", Path: "none",
				PublicKey:   "d3Zs1Xe2T4o7P0e5N8v6B9a3Y2g4M1l7J5i0H8u6C4q=",
				MeshAddress: "fd3a:91c2:5e07::0a4e:2c61:77d0:3b95",
				Candidates:  []string{"198.18.9.2:40977"},
				PathReason:  "punching",
			},
			{
				Name: "kappa", Source: "gossip", Path: "none",
				PublicKey: "b1Xq9Vd0R2m5N8c3L6t4Z7y1W0e2K9j5H3g8F6s4A2o=",
				Refusals:  []string{`name "kappa" is held by another key`},
			},
		},
		// Mid-rotation: the next seed in use since 11:58, the current one accepted until
		// 12:08; one member still on it.
		Seed: &status.Seed{ID: "3f2a91c0", NextID: "8b01d2e4", From: now.Add(-2 * time.Minute), Until: now.Add(8 * time.Minute),
			Rotation: &status.Rotation{Admin: "F0VTtFbd3d/GkI7KscEB/mqyHiuqBhd5W31DpjSCmT/V", Issued: now.Add(-4 * time.Minute), Excluded: 1, Offered: 5}},
		Mesh: &status.Mesh{
			Address:   "fd3a:91c2:5e07::8c1d:2f4e:9a01:77c3",
			Network:   "fd3a:91c2:5e07::/48",
			Members:   7,
			Connected: 4,
			NAT:       "easy",
			Reflected: []status.Reflection{
				{By: "beta", Address: "203.0.113.5:51900", Transport: "udp"},
				{By: "eta", Address: "203.0.113.5:51900", Transport: "udp"},
				{By: "iota", Address: "198.51.100.250:443", Transport: "ws"},
			},
			Bootstrap: []status.Bootstrap{
				{Target: "198.51.100.7:51900", Reached: "eta"},
				{Target: "boot.example.net:51900"},
				{Target: "wss://mesh.example.net/stt", Self: true},
			},
			RecordVersion: uint64(now.Add(-7 * time.Minute).UnixNano()),
			NetworkID:     "06bf2be6b984bb6b212c9f4594c5a35b",
			Admins:        []string{"F0VTtFbd38aQjsqxwQH+arIeK6oGF3lbfUOmNIKZP9U="},
			Revoked: []status.Revoked{{Key: "e5Rk2Yp8Wq1Lm4Nc7Vb0Xz3Ta6Sd9Fg2Hj5Kl8Qw1Er=", Name: "omicron",
				By: "F0VTtFbd38aQjsqxwQH+arIeK6oGF3lbfUOmNIKZP9U=", Issued: now.Add(-2 * time.Hour).UTC().Format(time.RFC3339)}},
			Statements: 1,
		},
	}
}

// TestStatusJSONGoldenMesh holds the JSON of a mesh node to testdata/status.json.golden
// (go test -update rewrites it): the mesh object with its lists, the members' source,
// mesh address, candidates and refusals.
func TestStatusJSONGoldenMesh(t *testing.T) {
	var b bytes.Buffer
	if err := writeJSON(&b, forJSON(sampleMeshStatus())); err != nil {
		t.Fatal(err)
	}
	checkGolden(t, "status.json.golden", "status --json", b.Bytes())
	var back status.Status
	if err := json.Unmarshal(b.Bytes(), &back); err != nil || back.Mesh == nil || back.Mesh.Bootstrap[2].Self != true {
		t.Errorf("the JSON does not read back: %v %+v", err, back.Mesh)
	}
}

// TestStatusJSONMeshListsNeverNull: a mesh with no reflection and no bootstrap yet
// prints [] for both, as the schema promises for every array.
func TestStatusJSONMeshListsNeverNull(t *testing.T) {
	st := status.Status{Interface: "stt4", Mesh: &status.Mesh{Address: "fd3a::1"}}
	var b bytes.Buffer
	if err := writeJSON(&b, forJSON(st)); err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{`"reflected": []`, `"bootstrap": []`} {
		if !strings.Contains(b.String(), want) {
			t.Errorf("status --json lacks %s:\n%s", want, b.String())
		}
	}
	if st.Mesh.Reflected != nil {
		t.Error("forJSON changed the status it was given")
	}
}

// TestStatusTextMeshTwentyMembers: with 20 members the text stays one row per member
// in each table, and only exceptions (a refusal) add a line.
func TestStatusTextMeshTwentyMembers(t *testing.T) {
	st := sampleMeshStatus()
	st.Peers = nil
	for i := range 20 {
		p := status.Peer{
			Name: fmt.Sprintf("node%02d", i), Source: "gossip", Path: "none",
			MeshAddress: fmt.Sprintf("fd3a:91c2:5e07::%x", i+1),
			Candidates:  []string{fmt.Sprintf("192.0.2.%d:51900", i+1), fmt.Sprintf("10.1.0.%d:51900", i+1)},
		}
		if i == 7 {
			p.Refusals = []string{"10.0.0.0/8: not inside accept_prefixes"}
		}
		st.Peers = append(st.Peers, p)
	}
	st.Mesh.Members = 20
	var b strings.Builder
	if err := renderStatus(&b, []status.Status{st}, DefaultStateDir, sampleNow()); err != nil {
		t.Fatal(err)
	}
	out := b.String()
	for i := range 20 {
		name := fmt.Sprintf("node%02d", i)
		var lines []string
		for l := range strings.SplitSeq(out, "\n") {
			if strings.Contains(l, " "+name+" ") || strings.HasSuffix(l, " "+name) || strings.Contains(l, " "+name+":") {
				lines = append(lines, l)
			}
		}
		want := 2 // its row in the peers' table and in the members' table
		if i == 7 {
			want = 3
		}
		if len(lines) != want {
			t.Errorf("%s is on %d lines, want %d:\n%s", name, len(lines), want, strings.Join(lines, "\n"))
		}
		if !strings.Contains(out, fmt.Sprintf("192.0.2.%d:51900, 10.1.0.%d:51900", i+1, i+1)) {
			t.Errorf("%s's candidates are not shown", name)
		}
	}
	if !strings.Contains(out, "  refused from node07: 10.0.0.0/8: not inside accept_prefixes\n") {
		t.Errorf("the refused claim is not shown:\n%s", out)
	}
	if !strings.Contains(out, "  members: 20 known, 4 connected\n") {
		t.Errorf("no members line:\n%s", out)
	}
}

// TestStatusTextMeshRefusedLine: the "mesh refused:" line lists every dropped record by
// outcome and the refused claims and names, largest first, and not the accepted or
// expired-and-swept records, which are no refusal.
func TestStatusTextMeshRefusedLine(t *testing.T) {
	for _, tc := range []struct {
		c    map[string]uint64
		want string
	}{
		{map[string]uint64{"mesh_record_accepted": 40, "mesh_records_swept": 3, "mesh_messages_in": 9}, "none"},
		{map[string]uint64{
			"mesh_record_accepted": 40, "mesh_record_stale": 5, "mesh_record_too_large": 1,
			"mesh_record_rate_limited": 7, "mesh_claims_refused": 2, "mesh_names_refused": 1,
			"drop_replay": 100,
		}, "7 rate_limited, 2 claims, 1 name, 1 too_large"},
		// Stale records are the normal echo of a flood: not a refusal worth a line.
		{map[string]uint64{"mesh_record_accepted": 40, "mesh_record_stale": 500}, "none"},
	} {
		if got := meshRefusals(tc.c); got != tc.want {
			t.Errorf("meshRefusals(%v) = %q, want %q", tc.c, got, tc.want)
		}
	}
	st := sampleMeshStatus()
	var b strings.Builder
	if err := renderStatus(&b, []status.Status{st}, DefaultStateDir, sampleNow()); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(b.String(), "  mesh refused: 2 bad_signature, 1 claim, 1 name, 1 revoked\n") {
		t.Errorf("mesh refused line:\n%s", b.String())
	}
}
