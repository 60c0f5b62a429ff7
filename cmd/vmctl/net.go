package main

import (
	"errors"
	"fmt"
	"net/url"
	"strings"

	"github.com/dvmproject/dvm/internal/api"
	"github.com/urfave/cli/v2"
)

// netCommand is `vmctl net`: virtual networks (VXLAN overlays between the nodes whose
// guests use them).
func netCommand() *cli.Command {
	return &cli.Command{
		Name:  "net",
		Usage: "virtual networks that guests attach to (vmctl vm create … --net NAME)",
		Subcommands: []*cli.Command{
			{
				Name:      "create",
				Usage:     "create a network",
				ArgsUsage: "NAME",
				Description: "Example:\n  vmctl net create blue --vni 42 --cidr 192.168.42.0/24\n\n" +
					"Each guest NIC on it gets a MAC (52:54:00:xx:xx:xx) and the lowest free address of\n" +
					"the CIDR; both stay with the guest when it moves. A direct-boot image gets its first\n" +
					"NIC's address on the kernel command line as dvm.ip=ADDR/PREFIX.",
				Flags: []cli.Flag{
					&cli.UintFlag{Name: "vni", Required: true, Usage: "VXLAN network identifier `N`, 1 to 16777215, unique in the cluster"},
					&cli.StringFlag{Name: "cidr", Required: true, Usage: "guests' address range, such as 192.168.42.0/24 or fd42::/64"},
					&cli.IntFlag{Name: "mtu", Usage: "guest MTU (default: the nodes' underlay MTU minus the VXLAN overhead, 1450 on 1500)"},
				},
				Action: netCreate,
			},
			{Name: "ls", Aliases: []string{"list"}, Usage: "list networks and the guests on them",
				Description: "Examples:\n  vmctl net ls\n  vmctl -o json net ls", Action: netList},
			{Name: "show", Usage: "show one network", ArgsUsage: "NAME",
				Description: "Example:\n  vmctl net show blue", Action: netShow},
			{Name: "delete", Aliases: []string{"rm"}, Usage: "delete a network no guest uses", ArgsUsage: "NAME",
				Description: "Example:\n  vmctl net delete blue", Action: deleteAction("network", "/v1/networks/")},
		},
	}
}

func netCreate(c *cli.Context) error {
	name, err := oneArg(c, "name")
	if err != nil {
		return err
	}
	vni := c.Uint("vni")
	if vni > api.MaxVNI {
		return fmt.Errorf("--vni %d is out of range: give 1 to %d", vni, api.MaxVNI)
	}
	req := api.CreateNetwork{Name: name, VNI: uint32(vni), CIDR: c.String("cidr"), MTU: c.Int("mtu")}
	check := req
	if fe := check.Normalize(); fe != nil {
		return flagError(fe)
	}
	cl, err := client(c)
	if err != nil {
		return err
	}
	var n api.Network
	if err := cl.Do(c.Context, "POST", "/v1/networks", req, &n); err != nil {
		var se *api.StatusError
		if errors.As(err, &se) && se.Field != "" && se.Field != "name" {
			return fmt.Errorf("--%s: %s", se.Field, strings.TrimPrefix(se.Msg, se.Field+": "))
		}
		return err
	}
	if jsonOut(c) {
		return printJSON(c, n)
	}
	table(c, netHeader, [][]string{netRow(n)})
	return nil
}

func netList(c *cli.Context) error { return list(c, "/v1/networks", netHeader, netRow) }

func netShow(c *cli.Context) error {
	name, err := oneArg(c, "name")
	if err != nil {
		return err
	}
	return show(c, "/v1/networks/"+url.PathEscape(name), func(_ *api.Client, n api.Network) error {
		table(c, netHeader, [][]string{netRow(n)})
		return nil
	})
}

const netHeader = "NAME\tVNI\tCIDR\tMTU\tGUESTS"

func netRow(n api.Network) []string {
	mtu := "auto"
	if n.MTU > 0 {
		mtu = fmt.Sprint(n.MTU)
	}
	return []string{n.Name, fmt.Sprint(n.VNI), n.CIDR, mtu, orDash(strings.Join(n.Guests, ","))}
}

// deleteAction deletes the object of NAME at path+NAME and says so: vmctl net delete,
// vmctl image delete.
func deleteAction(noun, path string) cli.ActionFunc {
	return func(c *cli.Context) error {
		name, err := oneArg(c, "name")
		if err != nil {
			return err
		}
		cl, err := client(c)
		if err != nil {
			return err
		}
		if err := cl.Do(c.Context, "DELETE", path+url.PathEscape(name), nil, nil); err != nil {
			return err
		}
		if !jsonOut(c) {
			fmt.Fprintf(c.App.Writer, "%s %s deleted\n", noun, name)
		}
		return nil
	}
}

// netFlag is `--net NAME[,NAME]` of vm create.
func netFlag() cli.Flag {
	return &cli.StringFlag{Name: "net", Usage: "attach to networks `NAME[,NAME]`, one NIC each (eth0 first; see vmctl net)"}
}

// parseNetFlag reads --net into the create request's networks.
func parseNetFlag(s string) ([]string, error) {
	if strings.TrimSpace(s) == "" {
		return nil, nil
	}
	var out []string
	for _, n := range strings.Split(s, ",") {
		out = append(out, strings.TrimSpace(n))
	}
	if fe := api.ValidateNetworkList(out); fe != nil {
		return nil, fmt.Errorf("--net: %s", fe.Msg)
	}
	return out, nil
}

// nicsLine shows a guest's NICs in vm show: "blue 52:54:00:12:34:56 192.168.42.1/24, …".
func nicsLine(nics []api.NIC) string {
	var parts []string
	for _, n := range nics {
		p := n.Network + " " + n.MAC
		if n.IP != "" {
			p += " " + n.IP
		}
		parts = append(parts, p)
	}
	return strings.Join(parts, ", ")
}
