package main

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"strings"

	"github.com/libp2p/go-libp2p/core/pnet"
	"github.com/spf13/cobra"

	"github.com/tauraft/raft/p2pnode"
)

func newSwarmKeyCmd(stdout io.Writer) *cobra.Command {
	var output string
	cmd := &cobra.Command{
		Use:   "swarm-key [--output FILE]",
		Short: "Print a new libp2p private-network swarm key",
		Long: `Generates a random libp2p private-network key in the standard swarm key
format (the one IPFS and Taubyte use) and prints it, or writes it to FILE
with mode 0600 (never overwriting a file).

Give every node of the cluster, and every kv client, the same file with
--swarm-key-file: peers without it cannot even connect. Private networks
run over TCP only (libp2p has no private-network mode for QUIC).`,
		Example: `  tauraft swarm-key --output swarm.key
  tauraft node --data ./n1 --swarm-key-file swarm.key
  tauraft kv --swarm-key-file swarm.key --peer /ip4/127.0.0.1/tcp/4001/p2p/12D3KooW... get k`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			key, err := p2pnode.NewSwarmKey()
			if err != nil {
				return failure(err)
			}
			if output == "" {
				_, err := stdout.Write(key)
				return err
			}
			f, err := os.OpenFile(output, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
			if err != nil {
				if errors.Is(err, fs.ErrExist) {
					return failure(fmt.Errorf("--output %s: file exists; not overwriting a swarm key", output))
				}
				return failure(fmt.Errorf("--output: %w", err))
			}
			_, err = f.Write(key)
			if err == nil {
				err = f.Sync()
			}
			if cerr := f.Close(); err == nil {
				err = cerr
			}
			if err != nil {
				_ = os.Remove(output)
				return failure(fmt.Errorf("--output: %w", err))
			}
			return nil
		},
	}
	cmd.Flags().StringVarP(&output, "output", "o", "", "write the key to this new file (mode 0600) instead of stdout")
	return cmd
}

// readSwarmKeyFile returns the private-network key stored in path, or nil
// for an empty path (no private network).
func readSwarmKeyFile(path string) (pnet.PSK, error) {
	if path == "" {
		return nil, nil
	}
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, usageErr("--swarm-key-file: %v", err)
	}
	psk, err := p2pnode.ParseSwarmKey(data)
	if err != nil {
		return nil, usageErr("--swarm-key-file %s: %s", path, strings.TrimPrefix(err.Error(), "p2pnode: "))
	}
	return psk, nil
}
