// yamux_rpc runs many short request/response streams against plugbay's Python yamux, with
// hashicorp/yamux logging as go-plugin's does (its warnings on stderr), and reports what the
// peer's frames made it log and what they asked of it:
//
//	yamux_rpc NETWORK ADDRESS STREAMS REQUEST RESPONSE PARALLEL
//
// It listens on ADDRESS, accepts one connection and runs a yamux server session on it, then
// (1) serves STREAMS streams the peer opens: writes RESPONSE bytes at once (as a gRPC server its
// settings), reads REQUEST bytes, closes (a brokered call the peer dials); (2) opens STREAMS
// streams itself, PARALLEL at a time: writes REQUEST bytes, reads RESPONSE bytes, closes (a call
// dialed into the peer). Once the peer closes
// the session it prints one JSON line: {"missing": frames the session logged as for a missing
// stream, "missing_updates": those of them that were window updates returning window,
// "window_updates": window updates with a non-zero delta the peer sent, "streams": streams done}
// and exits 0; errors print "error: ..." and exit 1; a watchdog ends it after 60 s (exit 3).
package main

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"os"
	"regexp"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/yamux"

	// AcceptOne and Fail, shared with yamux_bench
	"plugbay.test/yamuxutil"
)

// counting passes the session's log on to stderr and counts its "frame for missing stream" lines:
// all, and those of window updates that return window (Type:1, a length other than 0).
type counting struct {
	missing, updates int64
}

var missingUpdate = regexp.MustCompile(`frame for missing stream: Vsn:\d+ Type:1 Flags:\d+ StreamID:\d+ Length:[1-9]`)

func (c *counting) Write(p []byte) (int, error) {
	atomic.AddInt64(&c.missing, int64(bytes.Count(p, []byte("frame for missing stream"))))
	atomic.AddInt64(&c.updates, int64(len(missingUpdate.FindAll(p, -1))))
	return os.Stderr.Write(p)
}

// recorder reads the peer's frames off the connection as the session reads them: the headers
// whatever the chunks, payloads skipped.
type recorder struct {
	net.Conn
	hdr     [12]byte
	have    int
	body    uint32
	updates int64
}

func (r *recorder) Read(p []byte) (int, error) {
	n, err := r.Conn.Read(p)
	for b := p[:n]; len(b) > 0; {
		if r.body > 0 {
			k := uint32(len(b))
			if k > r.body {
				k = r.body
			}
			r.body -= k
			b = b[k:]
			continue
		}
		k := copy(r.hdr[r.have:], b)
		r.have += k
		b = b[k:]
		if r.have < len(r.hdr) {
			break
		}
		r.have = 0
		kind, sid, length := r.hdr[1], binary.BigEndian.Uint32(r.hdr[4:8]), binary.BigEndian.Uint32(r.hdr[8:12])
		switch {
		case kind == 0: // data
			r.body = length
		case kind == 1 && sid != 0 && length > 0: // a window update that returns window
			atomic.AddInt64(&r.updates, 1)
		}
	}
	return n, err
}

func main() {
	if len(os.Args) != 7 {
		fmt.Println("usage: yamux_rpc NETWORK ADDRESS STREAMS REQUEST RESPONSE PARALLEL")
		os.Exit(2)
	}
	go func() { time.Sleep(60 * time.Second); fmt.Println("error: watchdog"); os.Exit(3) }()
	network, address := os.Args[1], os.Args[2]
	var nums [4]int
	for i := range nums {
		v, err := strconv.Atoi(os.Args[3+i])
		if err != nil || v < 1 {
			yamuxutil.Fail(fmt.Errorf("STREAMS, REQUEST, RESPONSE and PARALLEL must be positive numbers, got %q", os.Args[3+i]))
		}
		nums[i] = v
	}
	streams, reqSize, respSize, parallel := nums[0], nums[1], nums[2], nums[3]

	conn, err := yamuxutil.AcceptOne(network, address)
	if err != nil {
		yamuxutil.Fail(err)
	}
	rec := &recorder{Conn: conn}
	logs := &counting{}
	cfg := yamux.DefaultConfig()
	cfg.LogOutput = logs
	sess, err := yamux.Server(rec, cfg)
	if err != nil {
		yamuxutil.Fail(err)
	}
	request, response := bytes.Repeat([]byte("q"), reqSize), bytes.Repeat([]byte("r"), respSize)

	var wg sync.WaitGroup
	for n := 0; n < streams; n++ { // (1) the peer's calls
		st, err := sess.Accept()
		if err != nil {
			yamuxutil.Fail(fmt.Errorf("accept: %w", err))
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			if _, err := st.Write(response); err != nil {
				yamuxutil.Fail(fmt.Errorf("write response: %w", err))
			}
			got := make([]byte, reqSize)
			if _, err := io.ReadFull(st, got); err != nil {
				yamuxutil.Fail(fmt.Errorf("read request: %w", err))
			}
			st.Close()
		}()
	}
	wg.Wait()

	slots := make(chan struct{}, parallel)
	for n := 0; n < streams; n++ { // (2) calls into the peer
		slots <- struct{}{}
		st, err := sess.Open()
		if err != nil {
			yamuxutil.Fail(fmt.Errorf("open: %w", err))
		}
		wg.Add(1)
		go func(n int) {
			defer func() { <-slots; wg.Done() }()
			if _, err := st.Write(request); err != nil {
				yamuxutil.Fail(fmt.Errorf("write request: %w", err))
			}
			got := make([]byte, respSize)
			if _, err := io.ReadFull(st, got); err != nil {
				yamuxutil.Fail(fmt.Errorf("read response: %w", err))
			}
			if !bytes.Equal(got, response) {
				yamuxutil.Fail(fmt.Errorf("call %d: the response differs", n))
			}
			st.Close()
		}(n)
	}
	wg.Wait()

	// the peer closes the session once its side of every stream has ended
	if _, err := sess.Accept(); err == nil {
		yamuxutil.Fail(fmt.Errorf("the peer opened a stream past the calls"))
	}
	out, _ := json.Marshal(map[string]int64{
		"missing": atomic.LoadInt64(&logs.missing), "missing_updates": atomic.LoadInt64(&logs.updates),
		"window_updates": atomic.LoadInt64(&rec.updates),
		"streams":        int64(2 * streams),
	})
	fmt.Println(string(out))
}
