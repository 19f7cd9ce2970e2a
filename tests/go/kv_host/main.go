// kv_host is a go-plugin 1.0.1 host, drop-in for go-plugin's examples/grpc host:
//
//	kv_host [--automtls] [-v] [--timeout 60s] put KEY VALUE
//	kv_host [--automtls] [-v] [--timeout 60s] get KEY      (prints the value)
//	kv_host [--automtls] [-v] [--timeout 60s] bench N      (prints JSON latency figures)
//
// The plugin command comes from KV_PLUGIN and runs through `sh -c`, like the Go example.
// Only gRPC is allowed. On stderr it reports the negotiated handshake and, after client.Kill
// (GRPCController.Shutdown, 2 s grace, then a forced kill), whether the plugin exited gracefully:
//
//	kv_host: handshake protocol=grpc version=1 network=unix address=/tmp/plugin123 automtls=true start_ms=12.3
//	kv_host: kill graceful=true
//
// Errors print "error: ..." on stdout (as the Go example does) and exit 1; exit 2 is a usage error
// and exit 3 means the --timeout watchdog fired.
package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"os"
	"os/exec"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	hclog "github.com/hashicorp/go-hclog"
	plugin "github.com/hashicorp/go-plugin"
	"google.golang.org/grpc"

	kvproto "plugbay.test/kvproto"
)

var handshake = plugin.HandshakeConfig{
	ProtocolVersion:  1,
	MagicCookieKey:   "BASIC_PLUGIN",
	MagicCookieValue: "hello",
}

type kvPlugin struct {
	plugin.NetRPCUnsupportedPlugin
}

func (p *kvPlugin) GRPCServer(broker *plugin.GRPCBroker, s *grpc.Server) error {
	return fmt.Errorf("kv_host only consumes the kv_grpc plugin")
}

func (p *kvPlugin) GRPCClient(ctx context.Context, broker *plugin.GRPCBroker, c *grpc.ClientConn) (interface{}, error) {
	return kvproto.NewKVClient(c), nil
}

// logSink sees every line of go-plugin's client logger (which also relays the plugin's stderr):
// it remembers how Kill ended and shows the lines on stderr when verbose, else only warnings and errors.
type logSink struct {
	mu       sync.Mutex
	verbose  bool
	graceful bool
	forced   bool
}

func (s *logSink) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, line := range strings.Split(strings.TrimRight(string(p), "\n"), "\n") {
		trimmed := strings.TrimSpace(line)
		if strings.HasSuffix(trimmed, ": plugin exited") {
			s.graceful = true
		}
		if strings.Contains(trimmed, "plugin failed to exit gracefully") {
			s.forced = true
		}
		if s.verbose || strings.Contains(line, "[WARN]") || strings.Contains(line, "[ERROR]") {
			fmt.Fprintln(os.Stderr, line)
		}
	}
	return len(p), nil
}

func main() {
	autoMTLS := flag.Bool("automtls", false, "negotiate go-plugin AutoMTLS with the plugin")
	verbose := flag.Bool("v", false, "show go-plugin's client log and the plugin's log lines on stderr")
	timeout := flag.Duration("timeout", 60*time.Second, "exit with code 3 when the whole run takes longer")
	flag.Usage = func() {
		fmt.Fprintf(os.Stderr, "usage: kv_host [--automtls] [-v] [--timeout D] put KEY VALUE | get KEY | bench N\n")
		flag.PrintDefaults()
	}
	flag.Parse()
	args := flag.Args()
	if len(args) < 2 || (args[0] == "put" && len(args) != 3) || (args[0] != "put" && len(args) != 2) {
		flag.Usage()
		os.Exit(2)
	}
	time.AfterFunc(*timeout, func() {
		fmt.Fprintf(os.Stderr, "kv_host: timed out after %s\n", *timeout)
		os.Exit(3)
	})
	if err := run(args, *autoMTLS, *verbose); err != nil {
		fmt.Printf("error: %v\n", err)
		os.Exit(1)
	}
}

func run(args []string, autoMTLS, verbose bool) (err error) {
	sink := &logSink{verbose: verbose}
	started := time.Now()
	client := plugin.NewClient(&plugin.ClientConfig{
		HandshakeConfig:  handshake,
		Plugins:          map[string]plugin.Plugin{"kv_grpc": &kvPlugin{}},
		Cmd:              exec.Command("sh", "-c", os.Getenv("KV_PLUGIN")),
		AllowedProtocols: []plugin.Protocol{plugin.ProtocolGRPC},
		AutoMTLS:         autoMTLS,
		Logger: hclog.New(&hclog.LoggerOptions{
			Name: "plugin", Level: hclog.Trace, Output: sink,
		}),
	})
	defer func() {
		client.Kill()
		sink.mu.Lock()
		fmt.Fprintf(os.Stderr, "kv_host: kill graceful=%t\n", sink.graceful && !sink.forced)
		sink.mu.Unlock()
	}()

	rpcClient, err := client.Client()
	if err != nil {
		return err
	}
	raw, err := rpcClient.Dispense("kv_grpc")
	if err != nil {
		return err
	}
	kv := raw.(kvproto.KVClient)
	startMS := float64(time.Since(started).Microseconds()) / 1000
	if rc := client.ReattachConfig(); rc != nil {
		fmt.Fprintf(os.Stderr, "kv_host: handshake protocol=%s version=%d network=%s address=%s automtls=%t start_ms=%.1f\n",
			client.Protocol(), client.NegotiatedVersion(), rc.Addr.Network(), rc.Addr.String(), autoMTLS, startMS)
	}

	call := func() (context.Context, context.CancelFunc) {
		return context.WithTimeout(context.Background(), 30*time.Second)
	}
	switch args[0] {
	case "put":
		ctx, cancel := call()
		defer cancel()
		_, err = kv.Put(ctx, &kvproto.PutRequest{Key: args[1], Value: []byte(args[2])})
		return err
	case "get":
		ctx, cancel := call()
		defer cancel()
		resp, err := kv.Get(ctx, &kvproto.GetRequest{Key: args[1]})
		if err != nil {
			return err
		}
		fmt.Println(string(resp.Value))
		return nil
	case "bench":
		n, err := strconv.Atoi(args[1])
		if err != nil || n < 1 {
			return fmt.Errorf("bench needs a positive call count, got %q", args[1])
		}
		return bench(kv, n, started, autoMTLS, call)
	default:
		return fmt.Errorf("please only use 'get', 'put' or 'bench', given: %q", args[0])
	}
}

// bench: one Put is the first call (start_to_first_call covers launch, handshake, dial and it),
// then n Gets of that key measured one by one.
func bench(kv kvproto.KVClient, n int, started time.Time, autoMTLS bool,
	call func() (context.Context, context.CancelFunc)) error {
	ctx, cancel := call()
	_, err := kv.Put(ctx, &kvproto.PutRequest{Key: "bench", Value: []byte("value")})
	cancel()
	if err != nil {
		return err
	}
	first := time.Since(started)
	lat := make([]float64, 0, n)
	t0 := time.Now()
	for i := 0; i < n; i++ {
		ctx, cancel := call()
		s := time.Now()
		_, err := kv.Get(ctx, &kvproto.GetRequest{Key: "bench"})
		lat = append(lat, float64(time.Since(s).Nanoseconds())/1000)
		cancel()
		if err != nil {
			return err
		}
	}
	total := time.Since(t0)
	sort.Float64s(lat)
	pct := func(p float64) float64 { return lat[int(p*float64(len(lat)-1)+0.5)] }
	out, _ := json.Marshal(map[string]interface{}{
		"start_to_first_call_ms": float64(first.Microseconds()) / 1000,
		"p50_us":                 pct(0.50),
		"p99_us":                 pct(0.99),
		"n":                      n,
		"calls_per_s":            float64(n) / total.Seconds(),
		"automtls":               autoMTLS,
	})
	fmt.Println(string(out))
	return nil
}

var _ io.Writer = (*logSink)(nil)
