-- Argo CD health of a tokensync.dev/ClientCredential.
--   Progressing  no status yet, or tokensync has not yet acted on the current spec
--                (status.observedGeneration or the Ready condition's is behind
--                metadata.generation), or Ready is Unknown / Pending
--   Healthy      Ready=True for the current generation (a RefreshFailing reason is
--                shown: the token is still valid, refreshes are being retried)
--   Degraded     Ready=False for the current generation, with its reason and message
local hs = {}

local function ready_condition(status)
  if status == nil or status.conditions == nil then
    return nil
  end
  for _, condition in ipairs(status.conditions) do
    if condition.type == "Ready" then
      return condition
    end
  end
  return nil
end

local function describe(condition)
  local text = condition.reason or ""
  if condition.message ~= nil and condition.message ~= "" then
    if text ~= "" then
      text = text .. ": "
    end
    text = text .. condition.message
  end
  return text
end

local generation = obj.metadata.generation
local condition = ready_condition(obj.status)

if condition == nil then
  hs.status = "Progressing"
  hs.message = "Waiting for tokensync to report status"
  return hs
end

-- Both the status and the condition carry the generation they describe; either behind
-- means the current spec has not been acted on yet.
local function behind(observed)
  return observed ~= nil and observed < generation
end
if generation ~= nil then
  local unknown = obj.status.observedGeneration == nil and condition.observedGeneration == nil
  if unknown or behind(obj.status.observedGeneration) or behind(condition.observedGeneration) then
    hs.status = "Progressing"
    hs.message = "Waiting for tokensync to act on generation " .. tostring(generation)
    return hs
  end
end

if condition.status == "True" then
  hs.status = "Healthy"
  hs.message = describe(condition)
  return hs
end

if condition.status == "False" and condition.reason ~= "Pending" then
  hs.status = "Degraded"
  hs.message = describe(condition)
  return hs
end

hs.status = "Progressing"
hs.message = describe(condition)
if hs.message == "" then
  hs.message = "Waiting for a token"
end
return hs
