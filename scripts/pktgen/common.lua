-- Shared settings of the lbd load profiles for pktgen-dpdk.
--
-- Set through the environment before starting pktgen:
--   LB_VIP        the listener's VIP            (default 198.18.0.10)
--   LB_PORT       an allowed listener port      (default 80)
--   LB_DENY_PORT  a port the load balancer's security group denies (default 81)
--   LB_MAC        Ethernet address of lbd's port facing pktgen (required)
--   GEN_MAC       pktgen's own port address     (default: the port's)
--   GEN_NET       the client addresses to draw from (default 198.18.128.0/17)
--   PKT_SIZE      frame size                    (default 64)
--   RATE          percent of line rate          (default 100)
--   STAY          1: stay in pktgen's prompt after the run (default: quit)
local M = {}

local function env(name, default)
  local v = os.getenv(name)
  if v == nil or v == "" then
    if default == nil then
      error("set " .. name .. " (see scripts/pktgen/common.lua)")
    end
    return default
  end
  return v
end

M.port = "0"
M.vip = env("LB_VIP", "198.18.0.10")
M.lb_port = tonumber(env("LB_PORT", "80"))
M.deny_port = tonumber(env("LB_DENY_PORT", "81"))
M.lb_mac = env("LB_MAC")
M.gen_mac = os.getenv("GEN_MAC")
M.gen_net = env("GEN_NET", "198.18.128.0/17")
M.size = tonumber(env("PKT_SIZE", "64"))
M.rate = tonumber(env("RATE", "100"))

-- The first and last client address of GEN_NET (an IPv4 /N).
function M.client_range()
  local a, b, c, d, len = M.gen_net:match("(%d+)%.(%d+)%.(%d+)%.(%d+)/(%d+)")
  local base = ((tonumber(a) * 256 + tonumber(b)) * 256 + tonumber(c)) * 256 + tonumber(d)
  local count = 2 ^ (32 - tonumber(len))
  local function dotted(n)
    return string.format("%d.%d.%d.%d", math.floor(n / 16777216) % 256,
      math.floor(n / 65536) % 256, math.floor(n / 256) % 256, n % 256)
  end
  return dotted(base + 1), dotted(base + count - 2)
end

-- Common port settings: TCP toward the VIP through lbd's port.
function M.setup()
  pktgen.stop(M.port)
  pktgen.reset(M.port)
  pktgen.set_mac(M.port, "dst", M.lb_mac)
  if M.gen_mac then
    pktgen.set_mac(M.port, "src", M.gen_mac)
  end
  pktgen.set_proto(M.port, "tcp")
  pktgen.set(M.port, "size", M.size)
  pktgen.set(M.port, "rate", M.rate)
end

-- Range packets of new flows to the VIP: the client address and port walk
-- GEN_NET and 1024-65535 (the destination port is the caller's).
function M.new_flows()
  local first, last = M.client_range()
  local r = pktgen.range
  r.dst_mac(M.port, "start", M.lb_mac)
  r.dst_ip(M.port, "start", M.vip)
  r.dst_ip(M.port, "inc", "0.0.0.0")
  r.src_ip(M.port, "start", first)
  r.src_ip(M.port, "min", first)
  r.src_ip(M.port, "max", last)
  r.src_ip(M.port, "inc", "0.0.0.1")
  r.src_port(M.port, "start", 1024)
  r.src_port(M.port, "min", 1024)
  r.src_port(M.port, "max", 65535)
  r.src_port(M.port, "inc", 1)
end

-- Runs pktgen command lines (what the Lua API lacks, such as
-- `range 0 tcp flag set syn`) through a command file.
function M.cli(...)
  local name = os.tmpname()
  local f = assert(io.open(name, "w"))
  for _, line in ipairs({...}) do
    f:write(line, "\n")
  end
  f:close()
  pktgen.run("cmd", name, "")
  os.remove(name)
end

-- The TCP flags of the range packets: "syn", or "ack" and "psh".
function M.range_flags(...)
  M.cli("range " .. M.port .. " tcp flag clr all")
  for _, flag in ipairs({...}) do
    M.cli("range " .. M.port .. " tcp flag set " .. flag)
  end
end

-- Sends for `seconds` without reporting (opening flows, say).
function M.send(seconds)
  pktgen.start(M.port)
  pktgen.delay(seconds * 1000)
  pktgen.stop(M.port)
  pktgen.delay(300)
end

-- Runs for `seconds`, then prints what was sent and received, and quits
-- unless STAY=1.
function M.run(seconds, label)
  local before = pktgen.portStats(M.port, "port")[tonumber(M.port)]
  pktgen.start(M.port)
  pktgen.delay(seconds * 1000)
  pktgen.stop(M.port)
  pktgen.delay(500)
  local st = pktgen.portStats(M.port, "port")[tonumber(M.port)]
  printf("%s: sent %d packets, received %d, %d s\n", label,
    st.opackets - before.opackets, st.ipackets - before.ipackets, seconds)
  if os.getenv("STAY") ~= "1" then
    pktgen.quit()
  end
end

return M
